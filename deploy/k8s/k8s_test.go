package k8s

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// namespace is where every overlay puts kiln.
const namespace = "kiln"

// natsRelease is the Helm release name of the NATS chart (nats/values.yaml):
// its client Service is kiln-nats, its headless Service kiln-nats-headless.
const natsRelease = "kiln-nats"

// operatorSecrets are the Secrets the manifests reference and the operator
// creates (README.md, "What the operator provides"); nothing renders them.
var operatorSecrets = []string{
	"kiln-tenants",
	"kiln-nats-gateway",
	"kiln-nats-scheduler",
	"kiln-nats-agents",
	"kiln-engine-tls",
	"kiln-gateway-tls",
	"kiln-nats-client-tls",
	"kiln-nats-auth",
	"kiln-nats-server-tls",
}

// overlay is what one kustomization renders to, as the test expects it.
type overlay struct {
	dir             string
	agentKind       string // StatefulSet or DaemonSet
	image           string // image of role R: fmt.Sprintf(image, R)
	gatewayReplicas int32
	tls             bool // gateway mutual TLS and NATS over TLS
	keda            bool // agents scaled by a KEDA ScaledObject
}

var overlays = []overlay{
	{dir: "base", agentKind: "StatefulSet", image: "127.0.0.1:5000/kiln/kiln-%s:dev", gatewayReplicas: 2},
	{dir: "overlays/production", agentKind: "StatefulSet", image: "registry.example.com/kiln/kiln-%s:1.0.0", gatewayReplicas: 3, tls: true},
	{dir: "overlays/daemonset-engine", agentKind: "DaemonSet", image: "127.0.0.1:5000/kiln/kiln-%s:dev", gatewayReplicas: 2},
	{dir: "overlays/keda", agentKind: "StatefulSet", image: "registry.example.com/kiln/kiln-%s:1.0.0", gatewayReplicas: 3, tls: true, keda: true},
}

// workload is a Deployment, StatefulSet or DaemonSet.
type workload struct {
	kind, name string
	replicas   *int32
	template   *corev1.PodTemplateSpec
}

// manifests are one overlay's objects, decoded.
type manifests struct {
	namespaces    map[string]*corev1.Namespace
	configMaps    map[string]*corev1.ConfigMap
	services      map[string]*corev1.Service
	pdbs          map[string]*policyv1.PodDisruptionBudget
	deployments   map[string]*appsv1.Deployment
	statefulSets  map[string]*appsv1.StatefulSet
	daemonSets    map[string]*appsv1.DaemonSet
	scaledObjects map[string]*scaledObject
	workloads     []workload
}

// decoder decodes the Kubernetes kinds the manifests may hold, failing on
// unknown or duplicate fields.
var decoder = func() runtime.Decoder {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, policyv1.AddToScheme} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return serializer.NewCodecFactory(s, serializer.EnableStrict).UniversalDeserializer()
}()

// scaledObject is the part of KEDA's ScaledObject (keda.sh/v1alpha1) the
// manifests use. KEDA's Go module would bring its controller's whole
// dependency tree for one type, so the test decodes into these fields
// strictly instead: a field they do not name is an error, as with the
// Kubernetes types.
type scaledObject struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   metav1.ObjectMeta `json:"metadata"`
	Spec       struct {
		ScaleTargetRef struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Name       string `json:"name"`
		} `json:"scaleTargetRef"`
		MinReplicaCount *int32 `json:"minReplicaCount"`
		MaxReplicaCount *int32 `json:"maxReplicaCount"`
		PollingInterval *int32 `json:"pollingInterval"`
		CooldownPeriod  *int32 `json:"cooldownPeriod"`
		Advanced        *struct {
			HorizontalPodAutoscalerConfig *struct {
				Behavior *struct {
					ScaleDown *hpaRules `json:"scaleDown,omitempty"`
					ScaleUp   *hpaRules `json:"scaleUp,omitempty"`
				} `json:"behavior"`
			} `json:"horizontalPodAutoscalerConfig"`
		} `json:"advanced"`
		Triggers []struct {
			Type     string            `json:"type"`
			Metadata map[string]string `json:"metadata"`
		} `json:"triggers"`
	} `json:"spec"`
}

// hpaRules are autoscaling/v2 HPAScalingRules, which KEDA passes on.
type hpaRules struct {
	StabilizationWindowSeconds *int32 `json:"stabilizationWindowSeconds"`
	Policies                   []struct {
		Type          string `json:"type"`
		Value         int32  `json:"value"`
		PeriodSeconds int32  `json:"periodSeconds"`
	} `json:"policies"`
}

func newManifests() *manifests {
	return &manifests{
		namespaces: map[string]*corev1.Namespace{}, configMaps: map[string]*corev1.ConfigMap{},
		services: map[string]*corev1.Service{}, pdbs: map[string]*policyv1.PodDisruptionBudget{},
		deployments: map[string]*appsv1.Deployment{}, statefulSets: map[string]*appsv1.StatefulSet{},
		daemonSets: map[string]*appsv1.DaemonSet{}, scaledObjects: map[string]*scaledObject{},
	}
}

// render builds the kustomization in dir as kubectl apply -k would.
func render(t *testing.T, dir string) *manifests {
	t.Helper()
	rm, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	m := newManifests()
	for _, res := range rm.Resources() {
		doc, err := res.AsYAML()
		if err != nil {
			t.Fatalf("%s: %v", res.CurId(), err)
		}
		if err := m.add(doc); err != nil {
			t.Fatalf("%s: %s: %v\n%s", dir, res.CurId(), err, doc)
		}
	}
	return m
}

// add decodes one object strictly and files it by kind.
func (m *manifests) add(doc []byte) error {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return err
	}
	if tm.Kind == "ScaledObject" {
		if tm.APIVersion != "keda.sh/v1alpha1" {
			return fmt.Errorf("ScaledObject apiVersion %q, want keda.sh/v1alpha1", tm.APIVersion)
		}
		so := &scaledObject{}
		if err := yaml.UnmarshalStrict(doc, so); err != nil {
			return err
		}
		m.scaledObjects[so.Metadata.Name] = so
		return nil
	}
	obj, _, err := decoder.Decode(doc, nil, nil)
	if err != nil {
		return err
	}
	switch o := obj.(type) {
	case *corev1.Namespace:
		m.namespaces[o.Name] = o
	case *corev1.ConfigMap:
		m.configMaps[o.Name] = o
	case *corev1.Service:
		m.services[o.Name] = o
	case *policyv1.PodDisruptionBudget:
		m.pdbs[o.Name] = o
	case *appsv1.Deployment:
		m.deployments[o.Name] = o
		m.workloads = append(m.workloads, workload{"Deployment", o.Name, o.Spec.Replicas, &o.Spec.Template})
	case *appsv1.StatefulSet:
		m.statefulSets[o.Name] = o
		m.workloads = append(m.workloads, workload{"StatefulSet", o.Name, o.Spec.Replicas, &o.Spec.Template})
	case *appsv1.DaemonSet:
		m.daemonSets[o.Name] = o
		m.workloads = append(m.workloads, workload{"DaemonSet", o.Name, nil, &o.Spec.Template})
	default:
		// A Secret among them would be inlined credentials: the operator
		// makes those (README.md).
		return fmt.Errorf("unexpected kind %T", obj)
	}
	return nil
}

// objectMetas are the metadata of every object rendered.
func (m *manifests) objectMetas() map[string]metav1.ObjectMeta {
	out := map[string]metav1.ObjectMeta{}
	put := func(kind string, om metav1.ObjectMeta) { out[kind+"/"+om.Name] = om }
	for _, o := range m.namespaces {
		put("Namespace", o.ObjectMeta)
	}
	for _, o := range m.configMaps {
		put("ConfigMap", o.ObjectMeta)
	}
	for _, o := range m.services {
		put("Service", o.ObjectMeta)
	}
	for _, o := range m.pdbs {
		put("PodDisruptionBudget", o.ObjectMeta)
	}
	for _, w := range m.workloads {
		switch w.kind {
		case "Deployment":
			put(w.kind, m.deployments[w.name].ObjectMeta)
		case "StatefulSet":
			put(w.kind, m.statefulSets[w.name].ObjectMeta)
		case "DaemonSet":
			put(w.kind, m.daemonSets[w.name].ObjectMeta)
		}
	}
	for _, o := range m.scaledObjects {
		put("ScaledObject", o.Metadata)
	}
	return out
}

// roles maps a kiln container's name to its binary.
var roles = map[string]string{"gateway": "kiln-gateway", "scheduler": "kiln-scheduler", "agent": "kiln-agent"}

// flags are a container's kiln flags as the binary sees them: --flag=value
// arguments, else KILN_<FLAG> variables from env and envFrom ConfigMaps.
// Values keep $(VAR) references, which the kubelet expands.
func (m *manifests) flags(t *testing.T, c *corev1.Container, known map[string]bool) map[string]string {
	t.Helper()
	out := map[string]string{}
	envFlag := func(name, value string) {
		flag, ok := strings.CutPrefix(name, "KILN_")
		if !ok {
			return
		}
		flag = strings.ReplaceAll(strings.ToLower(flag), "_", "-")
		if !known[flag] {
			t.Errorf("container %s: %s names no flag of its binary", c.Name, name)
		}
		if _, set := out[flag]; !set {
			out[flag] = value
		}
	}
	for _, a := range c.Args {
		name, value, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !strings.HasPrefix(a, "--") || !ok {
			t.Errorf("container %s: argument %q: want --flag=value", c.Name, a)
			continue
		}
		if !known[name] {
			t.Errorf("container %s: --%s is no flag of its binary", c.Name, name)
		}
		out[name] = value
	}
	// env wins over envFrom, as in the kubelet.
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			envFlag(e.Name, e.Value)
		}
	}
	for _, ef := range c.EnvFrom {
		if ef.ConfigMapRef == nil {
			t.Errorf("container %s: envFrom other than a ConfigMap", c.Name)
			continue
		}
		cm, ok := m.configMaps[ef.ConfigMapRef.Name]
		if !ok {
			t.Errorf("container %s: envFrom ConfigMap %s is not rendered", c.Name, ef.ConfigMapRef.Name)
			continue
		}
		for _, k := range sortedKeys(cm.Data) {
			envFlag(ef.Prefix+k, cm.Data[k])
		}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// mountedSecret returns the Secret mounted at the directory that holds
// file in the pod, if any.
func mountedSecret(spec *corev1.PodSpec, c *corev1.Container, file string) (string, bool) {
	for _, vm := range c.VolumeMounts {
		if path.Dir(file) != path.Clean(vm.MountPath) {
			continue
		}
		for _, v := range spec.Volumes {
			if v.Name == vm.Name && v.Secret != nil {
				return v.Secret.SecretName, true
			}
		}
	}
	return "", false
}

// envSource is the downward-API field a container variable comes from.
func envSource(c *corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			return e.ValueFrom.FieldRef.FieldPath
		}
	}
	return ""
}

func TestOverlays(t *testing.T) {
	known := knownFlags(t)
	for _, o := range overlays {
		t.Run(o.dir, func(t *testing.T) {
			m := render(t, o.dir)

			t.Run("namespace", func(t *testing.T) {
				for id, om := range m.objectMetas() {
					if strings.HasPrefix(id, "Namespace/") {
						if om.Name != namespace {
							t.Errorf("%s: want namespace %s", id, namespace)
						}
						continue
					}
					if om.Namespace != namespace {
						t.Errorf("%s is in namespace %q, want %q", id, om.Namespace, namespace)
					}
					if om.Labels["app.kubernetes.io/part-of"] != "kiln" {
						t.Errorf("%s: no app.kubernetes.io/part-of=kiln label", id)
					}
				}
			})

			t.Run("kiln containers", func(t *testing.T) {
				seen := map[string]int{}
				for _, w := range m.workloads {
					spec := &w.template.Spec
					if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
						t.Errorf("%s %s mounts a service account token it has no use for", w.kind, w.name)
					}
					psc := spec.SecurityContext
					if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
						t.Errorf("%s %s: pod must run as a non-root user", w.kind, w.name)
					}
					if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
						t.Errorf("%s %s: want seccomp RuntimeDefault", w.kind, w.name)
					}
					if len(spec.InitContainers) != 0 {
						t.Errorf("%s %s: unexpected init containers", w.kind, w.name)
					}
					for i := range spec.Containers {
						c := &spec.Containers[i]
						bin, ok := roles[c.Name]
						if !ok {
							t.Errorf("%s %s: container %q is no kiln role", w.kind, w.name, c.Name)
							continue
						}
						seen[c.Name]++
						checkContainer(t, o, w, c, m.flags(t, c, known[bin]))
					}
				}
				for role := range roles {
					if seen[role] != 1 {
						t.Errorf("%d workloads run the %s, want 1", seen[role], role)
					}
				}
			})

			t.Run("gateway", func(t *testing.T) {
				d, ok := m.deployments["kiln-gateway"]
				if !ok {
					t.Fatal("no kiln-gateway Deployment")
				}
				if d.Spec.Replicas == nil || *d.Spec.Replicas != o.gatewayReplicas || *d.Spec.Replicas < 2 {
					t.Errorf("gateway replicas %v, want %d (at least 2)", d.Spec.Replicas, o.gatewayReplicas)
				}
				aff := d.Spec.Template.Spec.Affinity
				if aff == nil || aff.PodAntiAffinity == nil || len(aff.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution)+len(aff.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) == 0 {
					t.Error("gateways have no pod anti-affinity")
				} else {
					for _, term := range aff.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution {
						sel := selector(t, term.PodAffinityTerm.LabelSelector)
						if !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
							t.Error("the gateways' anti-affinity does not select the gateway pods")
						}
					}
				}
				pdb, ok := m.pdbs["kiln-gateway"]
				if !ok {
					t.Fatal("no kiln-gateway PodDisruptionBudget")
				}
				if pdb.Spec.MinAvailable == nil || *pdb.Spec.MinAvailable != intstr.FromInt32(1) {
					t.Errorf("gateway PDB minAvailable %v, want 1", pdb.Spec.MinAvailable)
				}
				if got := m.selects(t, pdb.Spec.Selector); !slices.Equal(got, []string{"Deployment/kiln-gateway"}) {
					t.Errorf("gateway PDB selects %v, want the gateway pods only", got)
				}
				svc, ok := m.services["kiln-gateway"]
				if !ok || len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 7700 {
					t.Errorf("want Service kiln-gateway on port 7700, got %+v", svc)
				}
				c := &d.Spec.Template.Spec.Containers[0]
				f := m.flags(t, c, known["kiln-gateway"])
				if f["listen"] != "0.0.0.0:7700" {
					t.Errorf("gateway --listen %q, want 0.0.0.0:7700", f["listen"])
				}
				// A gateway off loopback needs a tenants file.
				if s, ok := mountedSecret(&d.Spec.Template.Spec, c, f["tenants-file"]); !ok || s != "kiln-tenants" {
					t.Errorf("gateway --tenants-file %q is not in Secret kiln-tenants (got %q)", f["tenants-file"], s)
				}
				for _, flag := range []string{"tls-cert", "tls-key", "tls-client-ca"} {
					s, ok := mountedSecret(&d.Spec.Template.Spec, c, f[flag])
					if o.tls && (!ok || s != "kiln-gateway-tls") {
						t.Errorf("gateway --%s %q is not in Secret kiln-gateway-tls", flag, f[flag])
					}
					if !o.tls && f[flag] != "" {
						t.Errorf("gateway --%s set without TLS in this overlay", flag)
					}
				}
			})

			t.Run("scheduler", func(t *testing.T) {
				d, ok := m.deployments["kiln-scheduler"]
				if !ok {
					t.Fatal("no kiln-scheduler Deployment")
				}
				if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
					t.Errorf("scheduler replicas %v, want 2 (leader and standby)", d.Spec.Replicas)
				}
				pdb, ok := m.pdbs["kiln-scheduler"]
				if !ok || !slices.Equal(m.selects(t, pdb.Spec.Selector), []string{"Deployment/kiln-scheduler"}) {
					t.Error("want a PodDisruptionBudget that selects the scheduler pods")
				}
			})

			t.Run("agents", func(t *testing.T) { checkAgents(t, m, o, known["kiln-agent"]) })

			t.Run("services", func(t *testing.T) {
				for _, name := range sortedKeys(m.services) {
					svc := m.services[name]
					if len(svc.Spec.Selector) == 0 {
						t.Errorf("Service %s selects nothing", name)
						continue
					}
					sel := labels.SelectorFromSet(svc.Spec.Selector)
					var matched []workload
					for _, w := range m.workloads {
						if sel.Matches(labels.Set(w.template.Labels)) {
							matched = append(matched, w)
						}
					}
					if len(matched) != 1 {
						t.Errorf("Service %s selects %d workloads' pods, want 1", name, len(matched))
						continue
					}
					for _, p := range svc.Spec.Ports {
						if !hasPort(matched[0].template, p.TargetPort) {
							t.Errorf("Service %s port %s: target port %s is no container port of %s", name, p.Name, p.TargetPort.String(), matched[0].name)
						}
					}
				}
			})

			t.Run("references", func(t *testing.T) {
				for _, w := range m.workloads {
					for _, ref := range references(&w.template.Spec) {
						switch ref.kind {
						case "ConfigMap":
							cm, ok := m.configMaps[ref.name]
							if !ok {
								t.Errorf("%s %s: ConfigMap %s is not rendered", w.kind, w.name, ref.name)
							} else if _, ok := cm.Data[ref.key]; ref.key != "" && !ok {
								t.Errorf("%s %s: ConfigMap %s has no key %s", w.kind, w.name, ref.name, ref.key)
							}
						case "Secret":
							if !slices.Contains(operatorSecrets, ref.name) {
								t.Errorf("%s %s: Secret %s is neither rendered nor one the operator provides", w.kind, w.name, ref.name)
							}
						}
					}
				}
			})

			t.Run("keda", func(t *testing.T) { checkKEDA(t, m, o, known["kiln-agent"]) })
		})
	}
}

// checkContainer checks what every kiln container must have.
func checkContainer(t *testing.T, o overlay, w workload, c *corev1.Container, f map[string]string) {
	t.Helper()
	where := fmt.Sprintf("%s %s container %s", w.kind, w.name, c.Name)
	if want := fmt.Sprintf(o.image, c.Name); c.Image != want {
		t.Errorf("%s: image %q, want %q", where, c.Image, want)
	}
	sc := c.SecurityContext
	switch {
	case sc == nil:
		t.Errorf("%s: no securityContext", where)
	default:
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("%s: root filesystem not read-only", where)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("%s: privilege escalation allowed", where)
		}
		if sc.Privileged != nil && *sc.Privileged {
			t.Errorf("%s: privileged", where)
		}
		if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
			t.Errorf("%s: want every capability dropped and none added", where)
		}
		if sc.RunAsUser != nil && *sc.RunAsUser == 0 {
			t.Errorf("%s: runs as root", where)
		}
	}

	// The HTTP port: --http-listen, the probes, the scrape annotations.
	_, port, err := net.SplitHostPort(f["http-listen"])
	if err != nil || port == "0" {
		t.Errorf("%s: --http-listen %q: want host:port with a fixed port", where, f["http-listen"])
	}
	var httpPort int32
	for _, p := range c.Ports {
		if p.Name == "http" {
			httpPort = p.ContainerPort
		}
	}
	if fmt.Sprint(httpPort) != port {
		t.Errorf("%s: container port http %d, --http-listen port %s", where, httpPort, port)
	}
	for _, p := range []struct {
		what  string
		probe *corev1.Probe
		path  string
	}{{"readiness", c.ReadinessProbe, "/readyz"}, {"liveness", c.LivenessProbe, "/healthz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s: no HTTP %s probe", where, p.what)
			continue
		}
		if p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port != intstr.FromString("http") {
			t.Errorf("%s: %s probe %s on %s, want %s on port http", where, p.what, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port.String(), p.path)
		}
	}
	ann := w.template.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != port || ann["prometheus.io/path"] != "/metrics" {
		t.Errorf("%s: Prometheus annotations %v, want scrape on port %s path /metrics", where, ann, port)
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if _, ok := c.Resources.Requests[r]; !ok {
			t.Errorf("%s: no %s request", where, r)
		}
	}
	if _, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok {
		t.Errorf("%s: no memory limit", where)
	}

	// NATS: the cluster's URL, three replicas, the role's own seed.
	if f["nats-replicas"] != "3" {
		t.Errorf("%s: --nats-replicas %q, want 3", where, f["nats-replicas"])
	}
	wantScheme := "nats"
	if o.tls {
		wantScheme = "tls"
	}
	for _, s := range strings.Split(f["nats-url"], ",") {
		u, err := url.Parse(s)
		if err != nil || u.Scheme != wantScheme || u.Hostname() != natsRelease {
			t.Errorf("%s: --nats-url %q, want %s://%s:4222", where, f["nats-url"], wantScheme, natsRelease)
		}
	}
	if s, ok := mountedSecret(&w.template.Spec, c, f["nats-nkey-file"]); !ok || !slices.Contains(operatorSecrets, s) {
		t.Errorf("%s: --nats-nkey-file %q is not in a Secret the operator provides", where, f["nats-nkey-file"])
	}
	for _, flag := range []string{"nats-tls-ca", "nats-tls-cert", "nats-tls-key"} {
		s, ok := mountedSecret(&w.template.Spec, c, f[flag])
		if o.tls && (!ok || s != "kiln-nats-client-tls") {
			t.Errorf("%s: --%s %q is not in Secret kiln-nats-client-tls", where, flag, f[flag])
		}
		if !o.tls && f[flag] != "" {
			t.Errorf("%s: --%s set without NATS TLS in this overlay", where, flag)
		}
	}

	// A read-only root needs somewhere to write.
	writable := map[string]bool{}
	for _, vm := range c.VolumeMounts {
		if !vm.ReadOnly {
			writable[vm.MountPath] = true
		}
	}
	if !writable["/tmp"] {
		t.Errorf("%s: /tmp is not writable", where)
	}
}

// checkAgents checks the agents' identity and their engine.
func checkAgents(t *testing.T, m *manifests, o overlay, known map[string]bool) {
	var w *workload
	for i := range m.workloads {
		if m.workloads[i].template.Spec.Containers[0].Name == "agent" {
			w = &m.workloads[i]
		}
	}
	if w == nil || w.kind != o.agentKind || w.name != "kiln-agent" {
		t.Fatalf("want the agents as %s kiln-agent, got %+v", o.agentKind, w)
	}
	spec := &w.template.Spec
	c := &spec.Containers[0]
	f := m.flags(t, c, known)

	// The agent's name is the pod's (StatefulSet: stable kiln-agent-N) or
	// its node's (DaemonSet), and its seed is the one made for that name.
	wantField := map[string]string{"StatefulSet": "metadata.name", "DaemonSet": "spec.nodeName"}[w.kind]
	ref := regexp.MustCompile(`^\$\(([A-Z_]+)\)$`).FindStringSubmatch(f["name"])
	if ref == nil || envSource(c, ref[1]) != wantField {
		t.Fatalf("agent --name %q: want $(VAR) with VAR from the downward API's %s", f["name"], wantField)
	}
	if want := "agent-" + f["name"] + ".nk"; path.Base(f["nats-nkey-file"]) != want {
		t.Errorf("agent --nats-nkey-file %q: want the seed %s (kilnd nats-creds names it so)", f["nats-nkey-file"], want)
	}
	if s, _ := mountedSecret(spec, c, f["nats-nkey-file"]); s != "kiln-nats-agents" {
		t.Errorf("agent seed in Secret %q, want kiln-nats-agents", s)
	}
	for _, flag := range []string{"blob-cache-dir", "work-dir"} {
		ok := false
		for _, vm := range c.VolumeMounts {
			if !vm.ReadOnly && strings.HasPrefix(f[flag], path.Clean(vm.MountPath)+"/") {
				ok = true
			}
		}
		if !ok {
			t.Errorf("agent --%s %q is on no writable volume", flag, f[flag])
		}
	}
	if f["drain-timeout"] == "" || spec.TerminationGracePeriodSeconds == nil || *spec.TerminationGracePeriodSeconds < 300 {
		t.Errorf("agent --drain-timeout %q and grace period %v: the grace period must cover the drain", f["drain-timeout"], spec.TerminationGracePeriodSeconds)
	}

	host, err := url.Parse(f["docker-host"])
	if err != nil {
		t.Fatalf("agent --docker-host %q: %v", f["docker-host"], err)
	}
	switch w.kind {
	case "StatefulSet":
		// A remote engine per agent, over mutual TLS.
		if host.Scheme != "tcp" || !strings.HasPrefix(host.Host, f["name"]+".") {
			t.Errorf("agent --docker-host %q: want tcp://%s.<domain>:port", f["docker-host"], f["name"])
		}
		env := map[string]string{}
		for _, e := range c.Env {
			env[e.Name] = e.Value
		}
		if env["DOCKER_TLS_VERIFY"] == "" {
			t.Error("agent: DOCKER_TLS_VERIFY unset: the agent refuses a remote engine without TLS verification")
		}
		if s, ok := mountedSecret(spec, c, path.Join(env["DOCKER_CERT_PATH"], "ca.pem")); !ok || s != "kiln-engine-tls" {
			t.Errorf("agent DOCKER_CERT_PATH %q is not the Secret kiln-engine-tls", env["DOCKER_CERT_PATH"])
		}
		ss := m.statefulSets["kiln-agent"]
		svc, ok := m.services[ss.Spec.ServiceName]
		if !ok || svc.Spec.ClusterIP != corev1.ClusterIPNone {
			t.Errorf("StatefulSet serviceName %q: want a rendered headless Service", ss.Spec.ServiceName)
		}
		if o.keda && ss.Spec.Replicas != nil {
			t.Errorf("StatefulSet replicas %d with KEDA: leave the count to the autoscaler", *ss.Spec.Replicas)
		}
		if !o.keda && (ss.Spec.Replicas == nil || *ss.Spec.Replicas < 1) {
			t.Error("StatefulSet has no replicas")
		}
	case "DaemonSet":
		// The node's engine through its socket.
		mounted := false
		for _, vm := range c.VolumeMounts {
			for _, v := range spec.Volumes {
				if v.Name == vm.Name && v.HostPath != nil && vm.MountPath == host.Path && v.HostPath.Type != nil && *v.HostPath.Type == corev1.HostPathSocket {
					mounted = true
				}
			}
		}
		if host.Scheme != "unix" || !mounted {
			t.Errorf("agent --docker-host %q: want unix:// to a hostPath Socket mounted there", f["docker-host"])
		}
		if len(spec.NodeSelector) == 0 {
			t.Error("DaemonSet agents run on every node: want a node selector for build nodes")
		}
	}
}

// checkKEDA checks the ScaledObject, in the overlays that have one.
func checkKEDA(t *testing.T, m *manifests, o overlay, known map[string]bool) {
	if !o.keda {
		if len(m.scaledObjects) != 0 {
			t.Errorf("unexpected ScaledObjects %v", sortedKeys(m.scaledObjects))
		}
		return
	}
	so, ok := m.scaledObjects["kiln-agent"]
	if !ok {
		t.Fatal("no ScaledObject kiln-agent")
	}
	ref := so.Spec.ScaleTargetRef
	if ref.APIVersion != "apps/v1" || ref.Kind != "StatefulSet" || m.statefulSets[ref.Name] == nil {
		t.Errorf("ScaledObject targets %+v, want the agent StatefulSet", ref)
	}
	if so.Spec.MinReplicaCount == nil || so.Spec.MaxReplicaCount == nil || *so.Spec.MinReplicaCount < 1 || *so.Spec.MinReplicaCount > *so.Spec.MaxReplicaCount {
		t.Errorf("ScaledObject replicas %v..%v", so.Spec.MinReplicaCount, so.Spec.MaxReplicaCount)
	}
	stream := sourceConst(t, "services/bus", `StreamRequests = "([A-Z_]+)"`)
	consumer := sourceConst(t, "scheduler", `bus\.StreamRequests, jetstream\.ConsumerConfig\{\s*Durable:\s+"([a-z-]+)"`)
	queued := sourceConst(t, "scheduler", `Name: "(kiln_scheduler_queue_depth)"`)
	busy := sourceConst(t, "agent", `Name: "(kiln_agent_slots_busy)"`)
	types := map[string]bool{}
	for _, tr := range so.Spec.Triggers {
		types[tr.Type] = true
		md := tr.Metadata
		switch tr.Type {
		case "nats-jetstream":
			if md["stream"] != stream || md["consumer"] != consumer || md["account"] != "$G" {
				t.Errorf("nats-jetstream trigger on %s/%s in %s, want the scheduler's intake %s/%s in $G", md["stream"], md["consumer"], md["account"], stream, consumer)
			}
			if want := natsRelease + "-headless." + namespace + ".svc.cluster.local:8222"; md["natsServerMonitoringEndpoint"] != want {
				t.Errorf("nats-jetstream endpoint %q, want %q", md["natsServerMonitoringEndpoint"], want)
			}
			if md["lagThreshold"] == "" {
				t.Error("nats-jetstream trigger without lagThreshold")
			}
		case "prometheus":
			if !strings.Contains(md["query"], queued) || !strings.Contains(md["query"], busy) || md["serverAddress"] == "" {
				t.Errorf("prometheus trigger %v: want a query on %s and %s, and a server", md, queued, busy)
			}
			// The demand is in slots: the threshold is one agent's.
			slots := m.flags(t, &m.statefulSets[ref.Name].Spec.Template.Spec.Containers[0], known)["slots"]
			if md["threshold"] != slots {
				t.Errorf("prometheus threshold %q, want the slots of one agent (--slots=%s)", md["threshold"], slots)
			}
		default:
			t.Errorf("unexpected trigger type %q", tr.Type)
		}
	}
	if !types["nats-jetstream"] || !types["prometheus"] {
		t.Errorf("triggers %v, want nats-jetstream and prometheus", types)
	}
}

// selects returns the workloads whose pods sel selects.
func (m *manifests) selects(t *testing.T, sel *metav1.LabelSelector) []string {
	s := selector(t, sel)
	var out []string
	for _, w := range m.workloads {
		if s.Matches(labels.Set(w.template.Labels)) {
			out = append(out, w.kind+"/"+w.name)
		}
	}
	return out
}

func selector(t *testing.T, sel *metav1.LabelSelector) labels.Selector {
	t.Helper()
	if sel == nil {
		t.Fatal("no selector")
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil || s.Empty() {
		t.Fatalf("selector %v: %v (empty selects everything)", sel, err)
	}
	return s
}

func hasPort(tmpl *corev1.PodTemplateSpec, target intstr.IntOrString) bool {
	for _, c := range tmpl.Spec.Containers {
		for _, p := range c.Ports {
			if (target.Type == intstr.String && p.Name == target.StrVal) || (target.Type == intstr.Int && p.ContainerPort == target.IntVal) {
				return true
			}
		}
	}
	return false
}

// ref is a Secret or ConfigMap a pod uses (key: the one it reads, if one).
type ref struct{ kind, name, key string }

func references(spec *corev1.PodSpec) []ref {
	var out []ref
	for _, v := range spec.Volumes {
		switch {
		case v.Secret != nil:
			out = append(out, ref{"Secret", v.Secret.SecretName, ""})
		case v.ConfigMap != nil:
			out = append(out, ref{"ConfigMap", v.ConfigMap.Name, ""})
		case v.Projected != nil:
			for _, s := range v.Projected.Sources {
				if s.Secret != nil {
					out = append(out, ref{"Secret", s.Secret.Name, ""})
				}
				if s.ConfigMap != nil {
					out = append(out, ref{"ConfigMap", s.ConfigMap.Name, ""})
				}
			}
		}
	}
	for _, c := range spec.Containers {
		for _, ef := range c.EnvFrom {
			if ef.SecretRef != nil {
				out = append(out, ref{"Secret", ef.SecretRef.Name, ""})
			}
			if ef.ConfigMapRef != nil {
				out = append(out, ref{"ConfigMap", ef.ConfigMapRef.Name, ""})
			}
		}
		for _, e := range c.Env {
			if e.ValueFrom == nil {
				continue
			}
			if k := e.ValueFrom.SecretKeyRef; k != nil {
				out = append(out, ref{"Secret", k.Name, k.Key})
			}
			if k := e.ValueFrom.ConfigMapKeyRef; k != nil {
				out = append(out, ref{"ConfigMap", k.Name, k.Key})
			}
		}
	}
	return out
}

// repoRoot is the kiln repository this module sits in.
const repoRoot = "../.."

// knownFlags reads each binary's flag names from the kiln sources that
// register them (fs.XxxVar(&v, "name", …)), so a manifest cannot use a
// flag that does not exist.
func knownFlags(t *testing.T) map[string]map[string]bool {
	t.Helper()
	dirs := map[string][]string{
		"kiln-gateway":   {"gateway", "services/service", "proto/rules/buildctx"},
		"kiln-scheduler": {"scheduler", "services/service"},
		"kiln-agent":     {"agent", "services/service", "proto/rules/buildctx"},
	}
	re := regexp.MustCompile(`fs\.\w*Var\([^"\n]*"([a-z0-9-]+)"`)
	out := map[string]map[string]bool{}
	for bin, ds := range dirs {
		out[bin] = map[string]bool{}
		for _, d := range ds {
			for _, src := range goSources(t, d) {
				for _, sm := range re.FindAllSubmatch(src, -1) {
					out[bin][string(sm[1])] = true
				}
			}
		}
	}
	// The reading itself must work: flags each binary is known to have.
	for bin, want := range map[string][]string{
		"kiln-gateway":   {"nats-url", "nats-replicas", "nats-nkey-file", "listen", "tenants-file", "tls-client-ca"},
		"kiln-scheduler": {"nats-url", "nats-replicas", "leader-lease"},
		"kiln-agent":     {"nats-url", "nats-replicas", "name", "docker-host", "context-max-bytes"},
	} {
		for _, f := range want {
			if !out[bin][f] {
				t.Fatalf("read no --%s flag for %s from the sources", f, bin)
			}
		}
	}
	return out
}

// sourceConst returns the first submatch of re in the non-test Go files of
// a kiln package directory.
func sourceConst(t *testing.T, dir, re string) string {
	t.Helper()
	rx := regexp.MustCompile(re)
	for _, src := range goSources(t, dir) {
		if sm := rx.FindSubmatch(src); sm != nil {
			return string(sm[1])
		}
	}
	t.Fatalf("%s: no match for %s", dir, re)
	return ""
}

// goSources returns the non-test Go files of a kiln package directory.
func goSources(t *testing.T, dir string) [][]byte {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(repoRoot, dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	var srcs [][]byte
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		srcs = append(srcs, src)
	}
	if len(srcs) == 0 {
		t.Fatalf("no Go files in %s", dir)
	}
	return srcs
}

// TestStrictDecoding shows the decoding the overlays go through rejects
// what the API server would: unknown fields, misspelt ones, unknown kinds.
func TestStrictDecoding(t *testing.T) {
	tests := []struct {
		name, doc string
		ok        bool
	}{
		{"valid", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: 2}\n", true},
		{"unknown field", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replica: 2}\n", false},
		{"duplicate field", "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {clusterIP: None, clusterIP: None}\n", false},
		{"wrong type", "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: x}\nspec: {minAvailable: [1]}\n", false},
		{"unknown kind", "apiVersion: v1\nkind: Secret\nmetadata: {name: x}\n", false},
		{"ScaledObject", "apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata: {name: x}\nspec: {minReplicaCount: 1}\n", true},
		{"ScaledObject unknown field", "apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata: {name: x}\nspec: {minReplicas: 1}\n", false},
		{"ScaledObject wrong version", "apiVersion: keda.sh/v1\nkind: ScaledObject\nmetadata: {name: x}\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newManifests()
			err := m.add([]byte(tt.doc))
			if (err == nil) != tt.ok {
				t.Errorf("decode: %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

// TestOperatorSecretsDocumented: every Secret the manifests and the NATS
// values expect is one the README tells the operator to make, and the
// README names no Secret that nothing uses.
func TestOperatorSecretsDocumented(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	for _, o := range overlays {
		m := render(t, o.dir)
		for _, w := range m.workloads {
			for _, r := range references(&w.template.Spec) {
				if r.kind == "Secret" {
					used[r.name] = true
				}
			}
		}
	}
	for _, f := range []string{"nats/values.yaml", "nats/values-tls.yaml"} {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, sm := range regexp.MustCompile(`secretName: (\S+)`).FindAllStringSubmatch(string(src), -1) {
			used[sm[1]] = true
		}
	}
	for _, s := range operatorSecrets {
		if !used[s] {
			t.Errorf("Secret %s is listed but nothing uses it", s)
		}
		if !strings.Contains(string(readme), "`"+s+"`") {
			t.Errorf("README.md does not tell the operator about Secret %s", s)
		}
	}
	for s := range used {
		if !slices.Contains(operatorSecrets, s) {
			t.Errorf("Secret %s is used but not listed as provided by the operator", s)
		}
	}
}
