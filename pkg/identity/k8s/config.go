package k8s

import (
	"fmt"
	"os"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/flowcontrol"
)

// Client lists and watches the resources the source caches, across all
// namespaces. fieldSelector is "" for everything. NewClient returns the
// production one; tests may back it with the fake clientset.
//
// It exists instead of kubernetes.Interface because the typed clientset
// links every API group k8s.io/api has (~56 packages, with their informers
// and listers): ~20 MiB of binary that the agent pays in resident memory
// although it reads seven resources of four groups.
type Client interface {
	ListWatch(res schema.GroupVersionResource, fieldSelector string) (cache.ListerWatcher, error)
}

// The resources the source watches.
var (
	podsResource           = corev1.SchemeGroupVersion.WithResource("pods")
	servicesResource       = corev1.SchemeGroupVersion.WithResource("services")
	nodesResource          = corev1.SchemeGroupVersion.WithResource("nodes")
	namespacesResource     = corev1.SchemeGroupVersion.WithResource("namespaces")
	endpointSlicesResource = discoveryv1.SchemeGroupVersion.WithResource("endpointslices")
	replicaSetsResource    = appsv1.SchemeGroupVersion.WithResource("replicasets")
	jobsResource           = batchv1.SchemeGroupVersion.WithResource("jobs")
)

// RESTConfig returns the client configuration: the kubeconfig at path when
// given; otherwise the in-cluster service account when running in a pod;
// otherwise the usual kubeconfig loading rules ($KUBECONFIG, ~/.kube/config),
// so `flowtrace agent` works the same on a node and on a laptop.
func RESTConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("load kubeconfig %s: %w", kubeconfig, err)
		}
		return cfg, nil
	}
	if os.Getenv("KUBERNETES_SERVICE_HOST") != "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster config: %w", err)
		}
		return cfg, nil
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("no in-cluster config and no usable kubeconfig: %w", err)
	}
	return cfg, nil
}

// NewClient returns a Client for RESTConfig(kubeconfig), identified as
// flowtrace in the API server's audit log.
func NewClient(kubeconfig string) (Client, error) {
	cfg, err := RESTConfig(kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.UserAgent = "flowtrace-agent"
	// Informers list once and then watch; a modest rate is plenty and keeps
	// a DaemonSet on every node from hammering the API server on restarts.
	cfg.QPS, cfg.Burst = 20, 40
	return NewClientForConfig(cfg)
}

// restClient holds one REST client per API group the source reads, sharing
// one HTTP client (connections) and one rate limiter, as the typed
// clientset does.
type restClient struct {
	groups map[schema.GroupVersion]*rest.RESTClient
}

// NewClientForConfig returns a Client talking to the API server of cfg
// (which it does not modify). Objects decode into the k8s.io/api types of
// core/v1, discovery/v1, apps/v1 and batch/v1 only.
func NewClientForConfig(cfg *rest.Config) (Client, error) {
	scheme := runtime.NewScheme()
	// Status (errors) and WatchEvent are unversioned "v1" kinds.
	metav1.AddToGroupVersion(scheme, schema.GroupVersion{Version: "v1"})
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, discoveryv1.AddToScheme, appsv1.AddToScheme, batchv1.AddToScheme} {
		if err := add(scheme); err != nil {
			return nil, fmt.Errorf("kubernetes client scheme: %w", err)
		}
	}
	codecs := serializer.NewCodecFactory(scheme)

	base := *cfg
	if base.UserAgent == "" {
		base.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	if base.RateLimiter == nil && base.QPS > 0 {
		if base.Burst <= 0 {
			return nil, fmt.Errorf("kubernetes client: burst must be positive when QPS is set")
		}
		base.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(base.QPS, base.Burst)
	}
	hc, err := rest.HTTPClientFor(&base)
	if err != nil {
		return nil, fmt.Errorf("kubernetes http client: %w", err)
	}
	c := &restClient{groups: map[schema.GroupVersion]*rest.RESTClient{}}
	for _, gv := range []schema.GroupVersion{corev1.SchemeGroupVersion, discoveryv1.SchemeGroupVersion, appsv1.SchemeGroupVersion, batchv1.SchemeGroupVersion} {
		gcfg := base
		gcfg.GroupVersion = &gv
		gcfg.APIPath = "/apis"
		if gv.Group == "" {
			gcfg.APIPath = "/api" // the legacy core group
		}
		// What the generated clients use: JSON unless the CBOR client
		// feature gates say otherwise.
		gcfg.NegotiatedSerializer = rest.CodecFactoryForGeneratedClient(scheme, codecs).WithoutConversion()
		rc, err := rest.RESTClientForConfigAndClient(&gcfg, hc)
		if err != nil {
			return nil, fmt.Errorf("kubernetes client for %s: %w", gv, err)
		}
		c.groups[gv] = rc
	}
	return c, nil
}

// ListWatch implements Client.
func (c *restClient) ListWatch(res schema.GroupVersionResource, fieldSelector string) (cache.ListerWatcher, error) {
	rc, ok := c.groups[res.GroupVersion()]
	if !ok {
		return nil, fmt.Errorf("no client for API group %s", res.GroupVersion())
	}
	return cache.NewFilteredListWatchFromClient(rc, res.Resource, metav1.NamespaceAll, func(o *metav1.ListOptions) {
		o.FieldSelector = fieldSelector
	}), nil
}
