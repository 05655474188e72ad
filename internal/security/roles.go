// Package security is the transport security of every Nexstor gRPC
// connection: mutual TLS configurations for servers and clients, the roles
// that certificates carry (admin, server, csi), per-method authorization by
// role as gRPC interceptors, and the translation of handshake failures into
// errors that say what to fix.
//
// A certificate's role is the URI SAN "nexstor://role/<role>" (also written
// as the subject's OU for people reading the certificate); certgen writes
// both. Only the URI SAN is trusted, and only in a certificate that verified
// against the system CA.
package security

import (
	"crypto/x509"
	"fmt"
	"net/url"
	"strings"
)

// Role is what a certificate may do.
type Role string

// The roles. Admin is the operator (nexctl); Server is a storage node talking
// to the management service and to other nodes; CSI is the Kubernetes
// plugin.
const (
	RoleAdmin  Role = "admin"
	RoleServer Role = "server"
	RoleCSI    Role = "csi"
	// RoleInsecure is the role of every caller on a server started with
	// transport security off; it passes every check.
	RoleInsecure Role = "insecure"
)

// Roles lists the roles a certificate can carry.
var Roles = []Role{RoleAdmin, RoleServer, RoleCSI}

// RoleURIScheme and RoleURIPrefix form the URI SAN naming a role.
const (
	RoleURIScheme = "nexstor"
	RoleURIPrefix = "nexstor://role/"
)

// Valid reports whether r is one of Roles.
func (r Role) Valid() bool {
	for _, x := range Roles {
		if r == x {
			return true
		}
	}
	return false
}

// URI returns the SAN URI that carries the role.
func (r Role) URI() *url.URL {
	return &url.URL{Scheme: RoleURIScheme, Host: "role", Path: "/" + string(r)}
}

// ParseRole returns the role named s.
func ParseRole(s string) (Role, error) {
	r := Role(strings.ToLower(strings.TrimSpace(s)))
	if !r.Valid() {
		return "", fmt.Errorf("role %q: unknown; use admin, server or csi", s)
	}
	return r, nil
}

// RoleOf returns the role a verified certificate carries. A certificate with
// no role URI, an unknown role, or more than one role has none.
func RoleOf(cert *x509.Certificate) (Role, error) {
	var found Role
	for _, u := range cert.URIs {
		if u.Scheme != RoleURIScheme || u.Host != "role" {
			continue
		}
		r := Role(strings.TrimPrefix(u.Path, "/"))
		if !r.Valid() {
			return "", fmt.Errorf("certificate %q: unknown role %q", cert.Subject.CommonName, r)
		}
		if found != "" && found != r {
			return "", fmt.Errorf("certificate %q: carries two roles (%s, %s)", cert.Subject.CommonName, found, r)
		}
		found = r
	}
	if found == "" {
		return "", fmt.Errorf("certificate %q carries no role (no %s<role> URI SAN); issue it with `nexstor certgen`",
			cert.Subject.CommonName, RoleURIPrefix)
	}
	return found, nil
}
