//go:build linux

package integration

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"github.com/flowtrace/flowtrace/test/k8s/k8stest"
)

func deployDir(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "deploy")
}

// readObjects decodes every document of a multi-document YAML file.
func readObjects(t *testing.T, path string) []*unstructured.Unstructured {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var out []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if len(m) == 0 {
			continue
		}
		out = append(out, &unstructured.Unstructured{Object: m})
	}
	return out
}

// TestDeployManifests has the real API server validate deploy/: the
// namespace and RBAC are created for real (so the ServiceAccount's rights
// can be checked), everything else with a server-side dry run.
func TestDeployManifests(t *testing.T) {
	c := k8stest.Start(t)
	ctx := context.Background()
	dyn, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	groups, err := restmapper.GetAPIGroupResources(c.Client.Discovery())
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDiscoveryRESTMapper(groups)
	dir := deployDir(t)

	apply := func(t *testing.T, obj *unstructured.Unstructured, dryRun bool) error {
		t.Helper()
		gvk := obj.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("%s %s: %v", gvk, obj.GetName(), err)
		}
		opts := metav1.CreateOptions{FieldValidation: "Strict"}
		if dryRun {
			opts.DryRun = []string{metav1.DryRunAll}
		}
		var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if m.Scope.Name() == "namespace" {
			ri = dyn.Resource(m.Resource).Namespace(obj.GetNamespace())
		}
		_, err = ri.Create(ctx, obj, opts)
		return err
	}

	files := []struct {
		path   string
		dryRun bool
	}{
		{"namespace.yaml", false},
		{"rbac.yaml", false},
		{"daemonset.yaml", true},
		{"tcp-listener/listener.yaml", true},
	}
	n := 0
	for _, f := range files {
		for _, obj := range readObjects(t, filepath.Join(dir, f.path)) {
			if err := apply(t, obj, f.dryRun); err != nil {
				t.Errorf("%s: %s %s rejected: %v", f.path, obj.GetKind(), obj.GetName(), err)
			}
			n++
		}
	}
	t.Logf("%d objects accepted", n)

	t.Run("the dry run validates", func(t *testing.T) {
		ds := readObjects(t, filepath.Join(dir, "daemonset.yaml"))[0]
		containers, _, _ := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "containers")
		containers[0].(map[string]any)["name"] = "Not_A_DNS_Label"
		unstructured.SetNestedSlice(ds.Object, containers, "spec", "template", "spec", "containers") //nolint:errcheck
		if err := apply(t, ds, true); err == nil || !strings.Contains(err.Error(), "Not_A_DNS_Label") {
			t.Errorf("invalid DaemonSet: err = %v, want a validation error", err)
		}
	})

	t.Run("tcp listener patch applies", func(t *testing.T) {
		ds := readObjects(t, filepath.Join(dir, "daemonset.yaml"))[0]
		if err := apply(t, ds, false); err != nil {
			t.Fatal(err)
		}
		patch, err := os.ReadFile(filepath.Join(dir, "tcp-listener", "daemonset-patch.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		js, err := yaml.ToJSON(patch)
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.Client.AppsV1().DaemonSets("flowtrace").Patch(ctx, "flowtrace", types.StrategicMergePatchType, js,
			metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict"})
		if err != nil {
			t.Fatalf("patch rejected: %v", err)
		}
		ctr := got.Spec.Template.Spec.Containers[0]
		if len(ctr.Ports) != 1 || ctr.Ports[0].ContainerPort != 4245 || len(got.Spec.Template.Spec.Volumes) != 5 {
			t.Errorf("patched DaemonSet: ports %+v, %d volumes", ctr.Ports, len(got.Spec.Template.Spec.Volumes))
		}
	})

	t.Run("service account may only read", func(t *testing.T) {
		user := "system:serviceaccount:flowtrace:flowtrace"
		cases := []struct {
			group, resource, verb string
			allowed               bool
		}{
			{"", "pods", "list", true},
			{"", "pods", "watch", true},
			{"", "services", "get", true},
			{"", "nodes", "watch", true},
			{"", "namespaces", "list", true},
			{"discovery.k8s.io", "endpointslices", "watch", true},
			{"apps", "replicasets", "list", true},
			{"batch", "jobs", "watch", true},
			{"", "pods", "delete", false},
			{"", "pods", "create", false},
			{"", "secrets", "get", false},
			{"", "configmaps", "list", false},
			{"apps", "deployments", "list", false},
		}
		for _, tc := range cases {
			sar := &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
				User: user, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:flowtrace", "system:authenticated"},
				ResourceAttributes: &authzv1.ResourceAttributes{Group: tc.group, Resource: tc.resource, Verb: tc.verb},
			}}
			res, err := c.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if res.Status.Allowed != tc.allowed {
				t.Errorf("%s %s/%s: allowed=%v, want %v (%s)", tc.verb, tc.group, tc.resource, res.Status.Allowed, tc.allowed, res.Status.Reason)
			}
		}
	})
}
