package operator

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/nexstor/nexstor/internal/security"
)

// CertSecretNames returns the names of the Secrets WriteCertSecrets writes
// under prefix: <prefix>-ca (ca.crt, ca.key) first, then one per role,
// <prefix>-<role> (ca.crt, <role>.crt, <role>.key), laid out as --cert-dir
// reads them.
func CertSecretNames(prefix string) []string {
	names := []string{prefix + "-ca"}
	for _, r := range security.Roles {
		names = append(names, prefix+"-"+string(r))
	}
	return names
}

// WriteCertSecrets stores the certificates that certgen wrote into dir as
// Secrets in namespace (see CertSecretNames), so that each workload mounts
// only its own role's key. When <prefix>-ca exists already, nothing is
// written and exists is true, unless force is set: a system's CA is never
// replaced by accident (its certificates would stop verifying). With force,
// every Secret is replaced.
func WriteCertSecrets(ctx context.Context, cfg *rest.Config, namespace, prefix, dir string, force bool) (exists bool, err error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return false, fmt.Errorf("kubernetes client: %w", err)
	}
	secrets := cs.CoreV1().Secrets(namespace)
	names := CertSecretNames(prefix)
	if _, err := secrets.Get(ctx, names[0], metav1.GetOptions{}); err == nil && !force {
		return true, nil
	} else if err != nil && !apierrors.IsNotFound(err) {
		return false, fmt.Errorf("reading secret %s/%s: %w", namespace, names[0], err)
	}
	read := func(files ...string) (map[string][]byte, error) {
		data := map[string][]byte{}
		for _, f := range files {
			b, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				return nil, err
			}
			data[f] = b
		}
		return data, nil
	}
	// The role Secrets first and the CA last: a run interrupted halfway
	// leaves no <prefix>-ca, so the next run writes them all again.
	for i := len(names) - 1; i >= 0; i-- {
		var data map[string][]byte
		if i == 0 {
			data, err = read("ca.crt", "ca.key")
		} else {
			role := string(security.Roles[i-1])
			data, err = read("ca.crt", role+".crt", role+".key")
		}
		if err != nil {
			return false, fmt.Errorf("certificates in %s: %w", dir, err)
		}
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: names[i], Namespace: namespace,
			Labels: map[string]string{"app.kubernetes.io/part-of": "nexstor", "app.kubernetes.io/component": "certificates"}},
			Type: corev1.SecretTypeOpaque, Data: data}
		_, err := secrets.Create(ctx, s, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			_, err = secrets.Update(ctx, s, metav1.UpdateOptions{})
		}
		if err != nil {
			return false, fmt.Errorf("writing secret %s/%s: %w", namespace, names[i], err)
		}
	}
	return false, nil
}
