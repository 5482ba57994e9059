package k8stest

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/flowtrace/flowtrace/pkg/identity"
)

// Register publishes pods and Services (e.g. the lab's identity file) in an
// API server that has no kubelet or controllers: it creates the node, the
// namespaces, each pod's owner chain (Deployment -> ReplicaSet, CronJob ->
// Job, or the named controller), the pods with their IPs set through the
// status subresource, and the Services (keeping a VIP inside the service
// range as the ClusterIP; otherwise the server assigns one). Existing
// objects are left alone, so it can run again.
func Register(ctx context.Context, cs kubernetes.Interface, node string, nodeIPs []netip.Addr, pods []identity.Pod, svcs []identity.Service) error {
	r := registrar{ctx: ctx, cs: cs}
	if node != "" {
		n, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{})
		switch {
		case apierrors.IsAlreadyExists(err):
		case err != nil:
			return fmt.Errorf("create node %s: %w", node, err)
		case len(nodeIPs) > 0:
			for _, ip := range nodeIPs {
				n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip.String()})
			}
			if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
				return fmt.Errorf("node %s addresses: %w", node, err)
			}
		}
	}
	for i := range pods {
		if err := r.pod(&pods[i], node); err != nil {
			return err
		}
	}
	for i := range svcs {
		if err := r.service(&svcs[i]); err != nil {
			return err
		}
	}
	return nil
}

type registrar struct {
	ctx context.Context
	cs  kubernetes.Interface
	ns  map[string]bool
}

func (r *registrar) namespace(ns string) error {
	if r.ns[ns] {
		return nil
	}
	_, err := r.cs.CoreV1().Namespaces().Create(r.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", ns, err)
	}
	if r.ns == nil {
		r.ns = map[string]bool{}
	}
	r.ns[ns] = true
	return nil
}

func controllerRef(apiVersion, kind, name string, uid types.UID) []metav1.OwnerReference {
	yes := true
	return []metav1.OwnerReference{{APIVersion: apiVersion, Kind: kind, Name: name, UID: uid, Controller: &yes}}
}

// owner creates the objects between the pod and its workload and returns
// the pod's controller reference.
func (r *registrar) owner(p *identity.Pod) ([]metav1.OwnerReference, error) {
	w := p.Workload
	if w.Kind == "" || w.Name == "" {
		return nil, nil
	}
	ns := p.Namespace
	sel := map[string]string{"flowtrace.io/workload": w.Name}
	tmpl := corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: sel}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "lab.invalid/pod:1"}}}}
	switch w.Kind {
	case "Deployment":
		d, err := r.cs.AppsV1().Deployments(ns).Create(r.ctx, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: w.Name},
			Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: sel}, Template: tmpl}}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			d, err = r.cs.AppsV1().Deployments(ns).Get(r.ctx, w.Name, metav1.GetOptions{})
		}
		if err != nil {
			return nil, fmt.Errorf("deployment %s/%s: %w", ns, w.Name, err)
		}
		rsName := w.Name + "-lab"
		rs, err := r.cs.AppsV1().ReplicaSets(ns).Create(r.ctx, &appsv1.ReplicaSet{
			ObjectMeta: metav1.ObjectMeta{Name: rsName, OwnerReferences: controllerRef("apps/v1", "Deployment", d.Name, d.UID)},
			Spec:       appsv1.ReplicaSetSpec{Selector: &metav1.LabelSelector{MatchLabels: sel}, Template: tmpl}}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			rs, err = r.cs.AppsV1().ReplicaSets(ns).Get(r.ctx, rsName, metav1.GetOptions{})
		}
		if err != nil {
			return nil, fmt.Errorf("replicaset %s/%s: %w", ns, rsName, err)
		}
		return controllerRef("apps/v1", "ReplicaSet", rs.Name, rs.UID), nil
	case "CronJob":
		jobName := w.Name + "-lab"
		job, err := r.cs.BatchV1().Jobs(ns).Create(r.ctx, &batchv1.Job{
			ObjectMeta: metav1.ObjectMeta{Name: jobName, OwnerReferences: controllerRef("batch/v1", "CronJob", w.Name, types.UID("lab-cronjob-"+w.Name))},
			Spec:       batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever, Containers: tmpl.Spec.Containers}}}},
			metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			job, err = r.cs.BatchV1().Jobs(ns).Get(r.ctx, jobName, metav1.GetOptions{})
		}
		if err != nil {
			return nil, fmt.Errorf("job %s/%s: %w", ns, jobName, err)
		}
		return controllerRef("batch/v1", "Job", job.Name, job.UID), nil
	}
	// StatefulSet, DaemonSet, Job, ...: the reference alone names it.
	api := "apps/v1"
	if w.Kind == "Job" {
		api = "batch/v1"
	}
	return controllerRef(api, w.Kind, w.Name, types.UID("lab-"+strings.ToLower(w.Kind)+"-"+w.Name)), nil
}

func (r *registrar) pod(p *identity.Pod, node string) error {
	if err := r.namespace(p.Namespace); err != nil {
		return err
	}
	refs, err := r.owner(p)
	if err != nil {
		return err
	}
	if p.Node != "" {
		node = p.Node
	}
	obj := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Labels: p.Labels, OwnerReferences: refs},
		Spec: corev1.PodSpec{NodeName: node, HostNetwork: p.HostNetwork,
			Containers: []corev1.Container{{Name: "c", Image: "lab.invalid/pod:1"}}},
	}
	created, err := r.cs.CoreV1().Pods(p.Namespace).Create(r.ctx, obj, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pod %s: %w", p.Key(), err)
	}
	if len(p.IPs) == 0 {
		return nil
	}
	created.Status.Phase = corev1.PodRunning
	created.Status.PodIP = p.IPs[0].String()
	for _, ip := range p.IPs {
		created.Status.PodIPs = append(created.Status.PodIPs, corev1.PodIP{IP: ip.String()})
	}
	if _, err := r.cs.CoreV1().Pods(p.Namespace).UpdateStatus(r.ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("pod %s status: %w", p.Key(), err)
	}
	return nil
}

func (r *registrar) service(s *identity.Service) error {
	if err := r.namespace(s.Namespace); err != nil {
		return err
	}
	// Look first: creating an existing Service with a fixed ClusterIP fails
	// on the IP allocation before the name conflict is noticed.
	if _, err := r.cs.CoreV1().Services(s.Namespace).Get(r.ctx, s.Name, metav1.GetOptions{}); err == nil {
		return nil
	}
	obj := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: s.Name}}
	cidr := netip.MustParsePrefix(ServiceCIDR)
	for _, vip := range s.VIPs {
		if cidr.Contains(vip) {
			obj.Spec.ClusterIP = vip.String()
			break
		}
	}
	for _, p := range s.Ports {
		proto := corev1.Protocol(strings.ToUpper(p.Protocol))
		if proto == "" {
			proto = corev1.ProtocolTCP
		}
		obj.Spec.Ports = append(obj.Spec.Ports, corev1.ServicePort{Name: p.Name, Port: int32(p.Port), Protocol: proto})
	}
	if len(obj.Spec.Ports) == 0 {
		obj.Spec.Ports = []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}}
	}
	_, err := r.cs.CoreV1().Services(s.Namespace).Create(r.ctx, obj, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("service %s: %w", s.Key(), err)
	}
	return nil
}
