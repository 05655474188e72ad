package fault

import (
	"slices"
	"strings"
)

// Spec is a registered fault code: its one kind, and the resolution given
// when a fault of that code carries none of its own.
type Spec struct {
	Code       string
	Kind       Kind
	Resolution string
}

// registry lists every fault code of the project. A code is stable once
// released (clients branch on it); it names one condition, has one kind,
// and is made by New, Wrap or a Fault literal with the code written as a
// constant, so that TestEveryCodeIsRegistered can find it. A new code is
// added here, in its group, in the same change that first uses it.
var registry = []Spec{
	// Block devices (internal/bdev).
	{"bdev.blocksize", InvalidArgument, "use a block size of 512 or 4096 bytes, at least the device's logical block size"},
	{"bdev.busy", FailedPrecondition, "unmount the device or stop the program that holds it, or choose another disk"},
	{"bdev.create_read_only", InvalidArgument, "create the file first, or open it writable"},
	{"bdev.direct", InvalidArgument, "add direct=false to the disk URI, or put the file on a filesystem that supports O_DIRECT"},
	{"bdev.not_a_disk", InvalidArgument, "give a regular file or a block device such as /dev/sdb"},
	{"bdev.not_found", NotFound, "check the path; give ?size=10GiB to create a file-backed disk"},
	{"bdev.path", InvalidArgument, "give the path of a file or block device"},
	{"bdev.permission", PermissionDenied, "check the device's permissions, or run the server as a user that may open it"},
	{"bdev.size", InvalidArgument, "give a size in whole blocks such as ?size=10GiB, matching an existing file's size"},
	{"bdev.uri", InvalidArgument, "write disk URIs as file:///path?size=10GiB, aio:///dev/sdb, uring:///dev/nvme0n1, malloc:///name?size=512MiB or a path"},
	{"bdev.uring_unavailable", FailedPrecondition, "choose the pread/pwrite engine with aio:///path (where uring://, a bare path or file:// was given), or allow io_uring on this host"},

	// Volumes and the nexus health store (internal/mgmt).
	{"health.bad_record", InvalidArgument, "send the JSON health record of the nexus with its generation"},
	{"health.corrupt_record", Internal, "recreate the volume's nexus from a replica you trust (nexus create --source)"},
	{"health.stale_generation", FailedPrecondition, "this nexus is stale and must stop; the volume's current nexus holds the record"},
	{"health.not_target", FailedPrecondition, "destroy that nexus; the volume is published on another node, whose nexus serves it"},
	{"volume.bad_spec", InvalidArgument, "see `nexctl volume create --help` for the accepted values"},
	{"volume.busy", Unavailable, "retry when the operation under way has finished"},
	{"volume.conflict", Aborted, "read the volume again (`nexctl volume get`) and retry if still needed"},
	{"volume.last_healthy_copy", FailedPrecondition, "bring another replica of the volume in sync first; the last healthy copy of a volume is never removed"},
	{"volume.exists", AlreadyExists, "choose another name, or delete the volume first"},
	{"volume.node_down", Unavailable, "start the node, or wait until it is joined again"},
	{"volume.not_found", NotFound, "list the volumes with `nexctl volume list`"},
	{"volume.not_placeable", FailedPrecondition, "add nodes or pools, free space, relax the selectors, or ask for fewer replicas"},
	{"volume.published", FailedPrecondition, "unpublish the volume first (`nexctl volume unpublish NAME`)"},
	{"volume.state", FailedPrecondition, "wait for the volume's current state to change, see `nexctl volume get`"},
	{"volume.unknown_node", NotFound, "give a node name, rank or UUID from `nexctl node list`"},

	// The CSI driver (internal/csi, nexstor csi).
	{"csi.attach", Unavailable, "check that the volume's nexus is published to this node and its NVMe/TCP port is reachable, and that the kernel has nvme-tcp loaded"},
	{"csi.bad_request", InvalidArgument, "see docs/kubernetes.md for the fields and StorageClass parameters the driver accepts"},
	{"csi.bad_token", Aborted, "list again from the start"},
	{"csi.busy", Aborted, "retry when the operation under way on the volume has finished"},
	{"csi.capability", InvalidArgument, "use a SINGLE_NODE access mode, and a block volume or a mount volume with ext4 or xfs"},
	{"csi.capacity", OutOfRange, "ask for a capacity range that holds a multiple of 4096 bytes"},
	{"csi.filesystem", FailedPrecondition, "use the volume with the file system it holds, or as a block volume"},
	{"csi.host_nqn", FailedPrecondition, "give the node plugin the host's NVMe identity (/etc/nvme) or --host-nqn"},
	{"csi.identity", FailedPrecondition, "check that the publish context's URI is the volume's nexus; disconnect the wrong controller"},
	{"csi.incompatible", AlreadyExists, "unstage or unpublish the volume first, or use another path"},
	{"csi.mkfs", Internal, "install e2fsprogs (ext4) or xfsprogs (xfs) where the node plugin runs; see its log"},
	{"csi.mount", Internal, "see the kernel log (dmesg) on the node and the node plugin's log"},
	{"csi.no_capacity", ResourceExhausted, "add nodes or pools, free space, relax the selectors, or ask for fewer replicas"},
	{"csi.no_device", Unavailable, "see the kernel log (dmesg) on the node; the nexus may have no healthy replica"},
	{"csi.node_not_found", NotFound, "run the node plugin only on members of the system, with --node-name set to the member's name (`nexctl node list`)"},
	{"csi.not_staged", FailedPrecondition, "stage the volume on this node first (NodeStageVolume)"},
	{"csi.resize", Internal, "see the node plugin's log; install e2fsprogs (ext4) or xfsprogs (xfs) where it runs"},
	{"csi.snapshot_exists", AlreadyExists, "choose another snapshot name, or delete the snapshot of that name first"},
	{"csi.snapshot_not_found", NotFound, "check the snapshot ID; the snapshot may have been deleted"},
	{"csi.single_writer", FailedPrecondition, "unpublish the volume at its other target first"},
	{"csi.state", Internal, "give the node plugin a writable state directory that survives restarts (--state-dir)"},
	{"csi.volume_exists", AlreadyExists, "choose another name, or delete the volume first"},
	{"csi.volume_not_found", NotFound, "check the volume ID; the volume may have been deleted"},

	// Certificates (internal/security, nexstor certgen, nexstor server).
	{"certgen.exists", AlreadyExists, "keep the certificates, or pass --force to replace the CA and every certificate"},
	{"security.certs", FailedPrecondition, "create certificates with `nexstor certgen --dir <dir>` and point the component at that directory"},
	{"security.cert_rejected", Unauthenticated, "use a currently valid certificate issued by this system's CA with `nexstor certgen`"},
	{"security.tls_mismatch", Unavailable, "use TLS on both sides, or --insecure on both sides"},
	{"security.unknown_ca", Unauthenticated, "use the ca.crt and certificates that one `nexstor certgen` run wrote"},
	{"server.tls", FailedPrecondition, "create certificates with `nexstor certgen --dir <dir>` and give --cert-dir <dir>, or run with --insecure for development"},
	{"server.data_dir_in_use", FailedPrecondition, "stop the other server, or give this one its own data_dir"},

	// Node control (internal/control).
	{"control.already_formatted", AlreadyExists, "nothing was changed; add --force to reformat the node"},
	{"control.foreign_system", FailedPrecondition, "set the system name back in the configuration, or reformat the node with --force"},
	{"control.no_engine", FailedPrecondition, "start the server with its engine"},
	{"control.no_system", InvalidArgument, "set name in the server configuration"},
	{"control.not_formatted", FailedPrecondition, "run `nexctl storage format` to format the node"},
	{"control.pool_create", FailedPrecondition, "fix the disks or the pools section of the configuration, then format again"},
	{"control.scan", Internal, "check that /sys is mounted and readable"},
	{"control.superblock_corrupt", FailedPrecondition, "restore the node superblock from a backup, or reformat the node with `nexctl storage format --force`"},
	{"control.superblock_io", Internal, "check that metadata_dir is readable, writable and has space"},
	{"metrics.listen", FailedPrecondition, `free the port, or choose another metrics address; "" disables metrics`},

	// The engine (internal/engine) and its objects.
	{"disk.not_found", NotFound, "check the path; for a file-backed disk give its size, e.g. file:///var/lib/nexstor/d0.img?size=10GiB"},
	{"disk.open", InvalidArgument, "check the disk URI: file:///path?size=10GiB, aio:///dev/sdb, uring:///dev/nvme0n1, malloc:///name?size=512MiB or a path"},
	{"disk.permission", FailedPrecondition, "run the server as a user that may read and write the disk"},
	{"engine.busy", Unavailable, "retry in a moment"},
	{"engine.cancelled", Unavailable, "retry with a longer timeout"},
	{"engine.closed", Unavailable, "retry when the server is back"},
	{"engine.data_dir_in_use", FailedPrecondition, "stop the other server, or give this one its own data dir (--data-dir, data_dir)"},
	{"engine.data_dir_lock", Internal, "check that the data dir is on a local file system that supports flock"},
	{"engine.state", Unavailable, "check the data dir's disk and permissions"},
	{"engine.host_nqn", InvalidArgument, "give a host NQN such as nqn.2014-08.org.nvmexpress:uuid:<uuid> (see /etc/nvme/hostnqn), or leave it empty"},
	{"nexus.quiesce_not_found", NotFound, "the hold ended (or the engine restarted): treat the snapshot as failed and take it again"},
	{"nexus.quiesce_timeout", InvalidArgument, "give a hold timeout of at most 60 s (0 means 10 s)"},
	{"nexus.quiesced", FailedPrecondition, "resume the nexus first, or wait for its hold to expire"},
	{"nexus.ana_drain", Unavailable, "call again to wait for the I/O under way to finish; no new I/O is accepted meanwhile"},
	{"nexus.ana_state", InvalidArgument, "use optimized, non-optimized, inaccessible, persistent-loss or change"},
	{"nexus.cntlid_range", InvalidArgument, "give 1 <= min <= max <= 65519, disjoint from the ranges of the nexus's publications on other nodes"},
	{"nexus.not_published_nvmf", FailedPrecondition, "publish the nexus over nvmf first: nexctl nexus publish NAME"},
	{"nexus.nvmf_only", InvalidArgument, "leave the controller ID range and the ANA state out for nbd, or publish over nvmf"},
	{"nexus.child_action", InvalidArgument, "use add, remove, fault, offline or online"},
	{"nexus.child_too_small", FailedPrecondition, "grow every child's replica to at least that size first, then resize the nexus"},
	{"nexus.export_resize", Internal, "see the server log; resize the nexus again to retry, or unpublish and publish it"},
	{"nexus.health_store", InvalidArgument, "use --health-store local or --health-store system"},
	{"nexus.no_system_store", FailedPrecondition, "run the node as a member of a system, or use the local health store (--health-store local)"},
	{"nexus.rebuilding", Unavailable, "wait for the rebuild (or the resync) to finish, or stop it, and retry"},
	{"nexus.shrink", InvalidArgument, "a nexus only grows: give a size larger than its size"},
	{"nexus.child_owned", FailedPrecondition, "a replica belongs to one nexus: remove it from its owner first, or use another replica"},
	{"nexus.degraded", FailedPrecondition, "make the children reachable and retry, leave them out, or pass --allow-degraded"},
	{"nexus.fenced", FailedPrecondition, "a newer instance of this nexus holds its children; destroy this one"},
	{"nexus.identity_changed", FailedPrecondition, "the replica was destroyed and created again: add it with `nexctl nexus add-child` for a full rebuild"},
	{"nexus.source", InvalidArgument, "name one of the --child URIs as --source"},
	{"nexus.child_missing", InvalidArgument, "give the child URI, as `nexctl nexus get` shows it"},
	{"nexus.child_not_found", NotFound, "see the children with `nexctl nexus get NAME`"},
	{"nexus.child_uri", InvalidArgument, "use bdev:///<replica-uuid> or nvmf://host:port/<nqn>"},
	{"nexus.error", FailedPrecondition, "check the child URIs (bdev:///<replica-uuid>, nvmf://host:port/<nqn>) and the server log"},
	{"nexus.exists", AlreadyExists, "choose another name, or destroy the existing nexus first"},
	{"nexus.failed", Unavailable, "check its health store (the data dir's disk, or the system's management service), then destroy and create the nexus again"},
	{"nexus.faulted", FailedPrecondition, "destroy the nexus and create it again over current children"},
	{"nexus.last_child", FailedPrecondition, "add and rebuild another child first"},
	{"nexus.name_invalid", InvalidArgument, "use 1-63 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit"},
	{"nexus.name_missing", InvalidArgument, "give the nexus a name of 1-63 characters of A-Z a-z 0-9 . _ -"},
	{"nexus.no_children", InvalidArgument, "give at least one child: --child bdev:///<replica-uuid> or --child nvmf://host:port/<nqn>"},
	{"nexus.no_healthy_child", Unavailable, "check that the children's replicas exist and their nodes are reachable"},
	{"nexus.no_rebuild", FailedPrecondition, "see the rebuilds with `nexctl nexus rebuild status NAME`"},
	{"nexus.not_found", NotFound, "list the nexuses with `nexctl nexus list`"},
	{"nexus.publish", Internal, "see the server log"},
	{"nexus.published", FailedPrecondition, "unpublish the nexus first: nexctl nexus unpublish NAME"},
	{"nexus.size", InvalidArgument, "give a size such as 1GiB, or 0 for the smallest child"},
	{"nexus.stale_child", FailedPrecondition, "leave the stale child out and add it afterwards so that it is rebuilt, or use --force if you know it is current"},
	{"nexus.timeout", Unavailable, "check that the children's nodes are reachable and retry"},
	{"nexus.uuid", InvalidArgument, "give a UUID, or leave it out to have one generated"},
	{"nexus.uuid_exists", AlreadyExists, "give another UUID, or leave it out to have one generated"},
	{"pool.busy", FailedPrecondition, "unshare the replica, or close what holds it, first"},
	{"pool.closed", Unavailable, "import the pool again"},
	{"pool.cluster_size", InvalidArgument, "give a power of two such as 4MiB, or 0 for the default"},
	{"pool.corrupt", FailedPrecondition, "nothing was changed on the disk; restore the data from another replica, or reformat the disk with `nexctl pool create --force` (its data is lost)"},
	{"pool.disk_has_pool", AlreadyExists, "import the pool on the disk (`nexctl pool import`), or pass --force to format it and destroy that pool's data"},
	{"pool.disk_in_use", FailedPrecondition, "use another disk, or destroy the pool that uses it first"},
	{"pool.disk_missing", InvalidArgument, "give a disk URI, e.g. file:///var/lib/nexstor/d0.img?size=10GiB or /dev/sdb"},
	{"pool.disk_too_small", InvalidArgument, "use a larger disk, or give a file-backed disk a larger size (file:///path?size=1GiB)"},
	{"pool.exists", AlreadyExists, "choose another name, or export or destroy the existing pool first"},
	{"pool.faulted", Unavailable, "fix the disk and restart the server, or import the pool again with `nexctl pool import`"},
	{"pool.has_pool", AlreadyExists, "import the pool on the device, or format it again with force (destroys that pool's data)"},
	{"pool.imported", AlreadyExists, "nothing to do; see `nexctl pool list`"},
	{"pool.invalid", InvalidArgument, "check the arguments"},
	{"pool.label_invalid", InvalidArgument, "use label keys of letters, digits, '.', '_', '-', '/', starting and ending with a letter or digit, at most 63 characters"},
	{"pool.io", Internal, "see the server log; check the disk"},
	{"pool.name_invalid", InvalidArgument, "use 1-63 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit"},
	{"pool.name_mismatch", InvalidArgument, "import the pool under the name it has, or leave the name out"},
	{"pool.name_missing", InvalidArgument, "give the pool a name of 1-63 characters of A-Z a-z 0-9 . _ -"},
	{"pool.nexus_child", FailedPrecondition, "remove those children from their nexuses (`nexctl nexus remove-child`) or destroy the nexuses first"},
	{"pool.no_space", ResourceExhausted, "destroy replicas you do not need, create a thin replica, or use another pool"},
	{"pool.not_empty", FailedPrecondition, "destroy the replicas first, or pass --force to destroy them with the pool"},
	{"pool.not_found", NotFound, "list the pools with `nexctl pool list`, or import the pool with `nexctl pool import`"},
	{"pool.not_pool", FailedPrecondition, "create a pool on the disk (`nexctl pool create NAME DISK`)"},
	{"pool.overcommit_invalid", InvalidArgument, "give a limit from 100% (no over-commit) to 100000%, or 0 for the default of 250%"},
	{"pool.overcommit", ResourceExhausted, "destroy or shrink thin replicas, raise the pool's over-commit limit (`nexctl pool create --overcommit`, pools[].overcommit), or use another pool"},
	{"pool.replica_exists", AlreadyExists, "choose another replica name or UUID"},
	{"pool.replica_names", AlreadyExists, "export the pool that holds the other replicas first"},
	{"pool.replica_not_found", NotFound, "list the replicas with `nexctl replica list`"},
	{"pool.shared", FailedPrecondition, "unshare the pool's replicas first (`nexctl replica unshare NAME`)"},
	{"pool.too_small", InvalidArgument, "use a larger device or a smaller cluster size"},
	{"pool.unsupported", FailedPrecondition, "nothing was written; open the pool with the Nexstor version that wrote it, or a newer one"},
	{"replica.exists", AlreadyExists, "choose another name; replica names are unique on a node"},
	{"replica.owned", FailedPrecondition, "remove it from its nexus first (nexctl nexus remove-child), or destroy the nexus; --force does it anyway"},
	{"replica.owner_missing", InvalidArgument, "give the UUID of the nexus that is gone (--owner), as `nexctl replica get` shows it"},
	{"replica.owner", InvalidArgument, "give the UUID of the nexus that will own the replica, or leave the owner out"},
	{"replica.export_resize", Internal, "see the server log; unshare and share the replica again"},
	{"replica.io", Internal, "see the server log; check the pool's disk"},
	{"replica.name_invalid", InvalidArgument, "use 1-63 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit"},
	{"replica.name_missing", InvalidArgument, "give the replica a name of 1-63 characters of A-Z a-z 0-9 . _ -"},
	{"replica.no_space", ResourceExhausted, "create a smaller or a thin replica (--thin), or use another pool"},
	{"replica.not_found", NotFound, "list the replicas with `nexctl replica list`"},
	{"replica.pool_missing", InvalidArgument, "name the pool with --pool"},
	{"replica.shared", FailedPrecondition, "unshare the replica first: nexctl replica unshare NAME"},
	{"replica.shrink", InvalidArgument, "replicas can only grow; give a larger size"},
	{"replica.size", InvalidArgument, "give a size such as --size 1GiB"},
	{"replica.size_unaligned", InvalidArgument, "use a multiple of the pool's cluster size (see `nexctl pool get`)"},
	{"replica.uuid", InvalidArgument, "give a UUID, or leave it out to have one generated"},
	{"share.allowed_hosts", InvalidArgument, "leave --allowed-host out for nbd, or share over nvmf"},
	{"share.export", Internal, "see the server log"},
	{"share.host_nqn", InvalidArgument, "give host NQNs such as nqn.2014-08.org.nvmexpress:uuid:<uuid> (see /etc/nvme/hostnqn on the host)"},
	{"share.nbd_disabled", FailedPrecondition, "start the server with an NBD listen address (nbd.listen in the config, or --nbd)"},
	{"share.nvmf_disabled", FailedPrecondition, "start the server with an NVMe/TCP listen address (nvmf.listen in the config, or --nvmf)"},
	{"share.protocol_invalid", InvalidArgument, "use --protocol nbd or --protocol nvmf"},

	// Snapshots and clones (internal/engine, internal/pool).
	{"snapshot.busy", FailedPrecondition, "close what reads the snapshot first"},
	{"snapshot.exists", AlreadyExists, "choose another name and uuid; names are unique among a pool's replicas and snapshots"},
	{"snapshot.invalid", InvalidArgument, "snapshots are taken of thin replicas only; check the name and uuid"},
	{"snapshot.name_invalid", InvalidArgument, "use 1-63 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit"},
	{"snapshot.name_missing", InvalidArgument, "give the snapshot a name of 1-63 characters of A-Z a-z 0-9 . _ -"},
	{"snapshot.not_found", NotFound, "list the snapshots with `nexctl snapshot list`"},
	{"snapshot.unsupported", FailedPrecondition, "use a pool of this node's pool backend"},
	{"snapshot.hold_expired", Aborted, "take the snapshot again; check the replicas' nodes if it keeps failing"},
	{"snapshot.no_copy", Unavailable, "make the volume's nodes reachable and its replicas healthy (or start the nodes holding the snapshot), then retry"},
	{"snapshot.not_ready", FailedPrecondition, "wait until `nexctl snapshot get` shows the snapshot ready"},
	{"snapshot.restore_size", InvalidArgument, "leave the size out (or give the snapshot's size), and resize the volume once it is created"},
	{"snapshot.thick_volume", FailedPrecondition, "create the volume with --thin to take snapshots of it"},
	{"snapshot.uuid", InvalidArgument, "give a UUID such as 9b2e8c1a-3f4d-4c55-8e21-0d6f1b7a9c3e"},

	// The management service (internal/mgmt).
	{"mgmt.address_in_use", AlreadyExists, "give this node its own grpc_listen address, or stop the other node and exclude its rank"},
	{"mgmt.bad_request", InvalidArgument, "format the node (`nexctl storage format`) and check its grpc_listen address"},
	{"mgmt.bad_selection", InvalidArgument, "select members by ranks (0-2,5) or by hosts (node-[1-3]), not both"},
	{"mgmt.excluded", FailedPrecondition, "clear the exclusion with `nexctl system exclude --clear --ranks RANK`, then start the member"},
	{"mgmt.foreign_system", FailedPrecondition, "point the node at the access points of its own system, or reformat it for this one (nexctl storage format --force)"},
	{"mgmt.name_in_use", AlreadyExists, "give the node its own node_name, or exclude the rank that holds the name if that node is gone"},
	{"mgmt.no_ranks", ResourceExhausted, "exclude and remove members that are gone to free their ranks"},
	{"mgmt.not_leader", Unavailable, "retry at the leader"},
	{"mgmt.not_member", NotFound, "join the system first"},
	{"mgmt.store", Unavailable, "check that the etcd cluster has a quorum, then retry"},

	// Clients: errors made on the calling side of a gRPC connection.
	{"cli.certs", FailedPrecondition, "give --cert-dir DIR with the ca.crt and admin.crt/.key that `nexstor certgen` wrote (or set NEXSTOR_CERT_DIR), or --insecure for a server started with --insecure"},
	{"cli.usage", InvalidArgument, "see the command's --help"},
	{"cli.wait_ended", FailedPrecondition, "see what changed with `nexctl volume get` or `nexctl node list`, and run the command again if it is still wanted"},
	{"cli.wait_timeout", DeadlineExceeded, "the work goes on without nexctl: follow it with `nexctl volume get`, `nexctl node list` or `nexctl event list`, or wait longer with --timeout"},
	{"engine.address", InvalidArgument, "give host, host:port or an IP address (an IPv6 address with a port in brackets: [::1]:10124)"},
	{"engine.unreachable", Unavailable, "check that `nexstor server` runs at that address and that it is reachable from here"},
	{"mgmt.unreachable", Unavailable, "check that the access points run `nexstor server --control` and are reachable from here"},
	{"rpc.aborted", Aborted, "retry the call"},
	{"rpc.already_exists", AlreadyExists, "choose another name, or use the existing object"},
	{"rpc.canceled", Canceled, "the call was canceled before it finished; run it again"},
	{"rpc.data_loss", DataLoss, "see the server log"},
	{"rpc.deadline_exceeded", DeadlineExceeded, "the server did not answer in time: retry, or allow more time (nexctl --timeout)"},
	{"rpc.failed_precondition", FailedPrecondition, "see the message for what must be done first"},
	{"rpc.internal", Internal, "see the server log"},
	{"rpc.invalid_argument", InvalidArgument, "check the arguments"},
	{"rpc.not_found", NotFound, "check the name; list what exists"},
	{"rpc.out_of_range", OutOfRange, "check the offsets and sizes given"},
	{"rpc.permission_denied", PermissionDenied, "use a certificate whose role may call this method (an admin certificate from `nexstor certgen`)"},
	{"rpc.resource_exhausted", ResourceExhausted, "free some space or capacity, or use fewer resources"},
	{"rpc.unauthenticated", Unauthenticated, "connect with a certificate signed by the system's CA (`nexstor certgen`)"},
	{"rpc.unavailable", Unavailable, "check that the server runs at that address and is reachable, then retry"},
	{"rpc.unimplemented", Unimplemented, "the server does not offer this call: run the same version of nexctl and of the server, or format the node if it is in maintenance mode"},
	{"rpc.unknown", Unknown, "see the server log"},
}

var byCode = func() map[string]Spec {
	m := make(map[string]Spec, len(registry))
	for _, s := range registry {
		if _, dup := m[s.Code]; !dup {
			m[s.Code] = s
		}
	}
	return m
}()

// Lookup returns the registration of code; ok is false for a code that is
// not registered (a code from a newer server, or "").
func Lookup(code string) (s Spec, ok bool) {
	s, ok = byCode[code]
	return s, ok
}

// Registry returns every registered code, sorted by code. The slice is a
// copy.
func Registry() []Spec {
	out := slices.Clone(registry)
	slices.SortFunc(out, func(a, b Spec) int { return strings.Compare(a.Code, b.Code) })
	return out
}
