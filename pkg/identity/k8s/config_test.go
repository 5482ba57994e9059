package k8s

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
)

// TestRESTClientPathsAndDecoding checks the production Client against a
// stub API server: each resource is read from its group's URL, the field
// selector is sent, and lists and watch events decode into the typed
// objects the handlers expect.
func TestRESTClientPathsAndDecoding(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.URL.Path+"?"+r.URL.Query().Get("fieldSelector"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Query().Get("watch") == "true" {
			fmt.Fprint(w, `{"type":"ADDED","object":{"apiVersion":"v1","kind":"Pod","metadata":{"name":"w","namespace":"shop","resourceVersion":"8"}}}`+"\n")
			return
		}
		var list string
		switch r.URL.Path {
		case "/api/v1/pods":
			list = `{"apiVersion":"v1","kind":"PodList","metadata":{"resourceVersion":"7"},"items":[{"metadata":{"name":"p","namespace":"shop"},"status":{"podIP":"10.0.0.1"}}]}`
		case "/api/v1/services":
			list = `{"apiVersion":"v1","kind":"ServiceList","metadata":{},"items":[]}`
		case "/api/v1/nodes":
			list = `{"apiVersion":"v1","kind":"NodeList","metadata":{},"items":[]}`
		case "/api/v1/namespaces":
			list = `{"apiVersion":"v1","kind":"NamespaceList","metadata":{},"items":[]}`
		case "/apis/discovery.k8s.io/v1/endpointslices":
			list = `{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSliceList","metadata":{},"items":[]}`
		case "/apis/apps/v1/replicasets":
			list = `{"apiVersion":"apps/v1","kind":"ReplicaSetList","metadata":{},"items":[{"metadata":{"name":"rs","namespace":"shop"}}]}`
		case "/apis/batch/v1/jobs":
			list = `{"apiVersion":"batch/v1","kind":"JobList","metadata":{},"items":[]}`
		default:
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, list)
	}))
	defer srv.Close()

	c, err := NewClientForConfig(&rest.Config{Host: srv.URL, QPS: 100, Burst: 100})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resources := map[string]schema.GroupVersionResource{
		"pods": podsResource, "services": servicesResource, "nodes": nodesResource, "namespaces": namespacesResource,
		"endpointslices": endpointSlicesResource, "replicasets": replicaSetsResource, "jobs": jobsResource,
	}
	list := func(res string, sel string, want runtime.Object) runtime.Object {
		t.Helper()
		lw, err := c.ListWatch(resources[res], sel)
		if err != nil {
			t.Fatal(err)
		}
		obj, err := lw.List(metav1.ListOptions{})
		if err != nil {
			t.Fatalf("%s: %v", res, err)
		}
		if fmt.Sprintf("%T", obj) != fmt.Sprintf("%T", want) {
			t.Fatalf("%s: decoded %T, want %T", res, obj, want)
		}
		return obj
	}
	pods := list("pods", "spec.nodeName=n1", &corev1.PodList{}).(*corev1.PodList)
	if len(pods.Items) != 1 || pods.Items[0].Status.PodIP != "10.0.0.1" || pods.ResourceVersion != "7" {
		t.Errorf("pods: %+v", pods)
	}
	list("services", "", &corev1.ServiceList{})
	list("nodes", "", &corev1.NodeList{})
	list("namespaces", "", &corev1.NamespaceList{})
	list("endpointslices", "", &discoveryv1.EndpointSliceList{})
	if rs := list("replicasets", "", &appsv1.ReplicaSetList{}).(*appsv1.ReplicaSetList); len(rs.Items) != 1 || rs.Items[0].Name != "rs" {
		t.Errorf("replicasets: %+v", rs)
	}
	list("jobs", "", &batchv1.JobList{})

	lw, err := c.ListWatch(podsResource, "spec.nodeName=n1")
	if err != nil {
		t.Fatal(err)
	}
	w, err := lw.Watch(metav1.ListOptions{ResourceVersion: "7"})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	select {
	case ev := <-w.ResultChan():
		if p, ok := ev.Object.(*corev1.Pod); ev.Type != watch.Added || !ok || p.Name != "w" {
			t.Errorf("watch event %v %#v", ev.Type, ev.Object)
		}
	case <-ctx.Done():
		t.Fatal("no watch event")
	}

	mu.Lock()
	defer mu.Unlock()
	want := map[string]bool{"/api/v1/pods?spec.nodeName=n1": false, "/apis/apps/v1/replicasets?": false, "/apis/discovery.k8s.io/v1/endpointslices?": false}
	for _, s := range seen {
		if _, ok := want[s]; ok {
			want[s] = true
		}
	}
	for s, ok := range want {
		if !ok {
			t.Errorf("no request %s; saw %v", s, seen)
		}
	}
}
