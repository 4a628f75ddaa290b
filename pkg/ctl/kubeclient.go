package ctl

import (
	"context"
	"encoding/json"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
)

// The Kubernetes API as mailfwdctl uses it: ConfigMaps, Secrets and
// Namespaces of core/v1, and SelfSubjectReviews for the audit trail, over
// client-go's REST client and kubeconfig handling. Neither client-go's typed
// clients nor k8s.io/api's types are linked: the typed clients import
// k8s.io/client-go/kubernetes/scheme, which registers every API group of
// Kubernetes (12.6 MB of mailfwdctl), and k8s.io/api/core/v1 holds every
// core kind (3.2 MB) for the three used here (issue 21).

// kubeConfigMap is a core/v1 ConfigMap. Every field of the API's is here:
// an update writes back all it read.
type kubeConfigMap struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Immutable         *bool             `json:"immutable,omitempty"`
	Data              map[string]string `json:"data,omitempty"`
	BinaryData        map[string][]byte `json:"binaryData,omitempty"`
}

// kubeSecret is a core/v1 Secret, every field of the API's.
type kubeSecret struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Immutable         *bool             `json:"immutable,omitempty"`
	Data              map[string][]byte `json:"data,omitempty"`
	StringData        map[string]string `json:"stringData,omitempty"`
	Type              string            `json:"type,omitempty"`
}

// secretTypeOpaque is core/v1's SecretTypeOpaque.
const secretTypeOpaque = "Opaque"

// kubeNamespace is a core/v1 Namespace as far as mailfwdctl looks (whether
// it exists); it is only read.
type kubeNamespace struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
}

// kubeSelfSubjectReview is an authentication/v1 SelfSubjectReview.
type kubeSelfSubjectReview struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Status            struct {
		UserInfo struct {
			Username string              `json:"username,omitempty"`
			UID      string              `json:"uid,omitempty"`
			Groups   []string            `json:"groups,omitempty"`
			Extra    map[string][]string `json:"extra,omitempty"`
		} `json:"userInfo,omitempty"`
	} `json:"status,omitempty"`
}

var (
	coreGV = schema.GroupVersion{Version: "v1"}
	authGV = schema.GroupVersion{Group: "authentication.k8s.io", Version: "v1"}
)

// kubeObjects is the part of a typed resource client mailfwdctl calls, with
// client-go's method shapes.
type kubeObjects[T any] interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*T, error)
	Create(ctx context.Context, obj *T, opts metav1.CreateOptions) (*T, error)
	Update(ctx context.Context, obj *T, opts metav1.UpdateOptions) (*T, error)
}

// kubeCoreV1 is the core/v1 client mailfwdctl uses.
type kubeCoreV1 interface {
	ConfigMaps(namespace string) kubeObjects[kubeConfigMap]
	Secrets(namespace string) kubeObjects[kubeSecret]
	Namespaces() kubeObjects[kubeNamespace]
}

// kubeSelfSubjectReviews asks the API server who we are.
type kubeSelfSubjectReviews interface {
	Create(ctx context.Context, r *kubeSelfSubjectReview, opts metav1.CreateOptions) (*kubeSelfSubjectReview, error)
}

// kubeAuthenticationV1 is the authentication/v1 client mailfwdctl uses.
type kubeAuthenticationV1 interface {
	SelfSubjectReviews() kubeSelfSubjectReviews
}

// newKubeClient makes the core/v1 and authentication/v1 clients for rc.
func newKubeClient(rc *rest.Config) (coreClient, error) {
	// The meta types only: Status (for errors) and the options of the two
	// group versions; objects are JSON (encoding/json) in and out.
	scheme := runtime.NewScheme()
	metav1.AddToGroupVersion(scheme, coreGV)
	metav1.AddToGroupVersion(scheme, authGV)
	codecs := serializer.NewCodecFactory(scheme)
	params := runtime.NewParameterCodec(scheme)
	core, err := restFor(rc, codecs, coreGV, "/api")
	if err != nil {
		return nil, err
	}
	auth, err := restFor(rc, codecs, authGV, "/apis")
	if err != nil {
		return nil, err
	}
	return restClients{core: restCore{c: core, params: params}, auth: restAuth{c: auth, params: params}}, nil
}

// restFor is a REST client of one API group version, as the typed client
// of that group makes it.
func restFor(rc *rest.Config, codecs serializer.CodecFactory, gv schema.GroupVersion, apiPath string) (*rest.RESTClient, error) {
	cfg := rest.CopyConfig(rc)
	cfg.GroupVersion = &gv
	cfg.APIPath = apiPath
	cfg.ContentType = "application/json"
	cfg.NegotiatedSerializer = codecs.WithoutConversion()
	if cfg.UserAgent == "" {
		cfg.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	c, err := rest.RESTClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s: %w", gv, err)
	}
	return c, nil
}

type restClients struct {
	core restCore
	auth restAuth
}

func (c restClients) CoreV1() kubeCoreV1                     { return c.core }
func (c restClients) AuthenticationV1() kubeAuthenticationV1 { return c.auth }

type restCore struct {
	c      rest.Interface
	params runtime.ParameterCodec
}

func (c restCore) ConfigMaps(ns string) kubeObjects[kubeConfigMap] {
	return restObjects[kubeConfigMap]{c: c.c, params: c.params, ns: ns, resource: "configmaps", kind: "ConfigMap", gv: coreGV}
}

func (c restCore) Secrets(ns string) kubeObjects[kubeSecret] {
	return restObjects[kubeSecret]{c: c.c, params: c.params, ns: ns, resource: "secrets", kind: "Secret", gv: coreGV}
}

func (c restCore) Namespaces() kubeObjects[kubeNamespace] {
	return restObjects[kubeNamespace]{c: c.c, params: c.params, resource: "namespaces", kind: "Namespace", gv: coreGV}
}

// kubeObject is what restObjects needs of an object: its metadata.
type kubeObject interface {
	GetName() string
	GetObjectKind() schema.ObjectKind
}

// restObjects is one resource (namespaced when ns is set), as the typed
// clients call it.
type restObjects[T any] struct {
	c        rest.Interface
	params   runtime.ParameterCodec
	ns       string
	resource string
	kind     string
	gv       schema.GroupVersion
}

func (o restObjects[T]) Get(ctx context.Context, name string, opts metav1.GetOptions) (*T, error) {
	return kubeDo[T](ctx, o.c.Get().NamespaceIfScoped(o.ns, o.ns != "").Resource(o.resource).Name(name).
		VersionedParams(&opts, o.params))
}

func (o restObjects[T]) Create(ctx context.Context, obj *T, opts metav1.CreateOptions) (*T, error) {
	req := o.c.Post().NamespaceIfScoped(o.ns, o.ns != "").Resource(o.resource).VersionedParams(&opts, o.params)
	if err := kubeBody(req, obj, o.kind, o.gv); err != nil {
		return nil, err
	}
	return kubeDo[T](ctx, req)
}

func (o restObjects[T]) Update(ctx context.Context, obj *T, opts metav1.UpdateOptions) (*T, error) {
	m, ok := any(obj).(kubeObject)
	if !ok {
		return nil, fmt.Errorf("kubernetes: %T has no name", obj)
	}
	req := o.c.Put().NamespaceIfScoped(o.ns, o.ns != "").Resource(o.resource).Name(m.GetName()).VersionedParams(&opts, o.params)
	if err := kubeBody(req, obj, o.kind, o.gv); err != nil {
		return nil, err
	}
	return kubeDo[T](ctx, req)
}

// kubeBody sets obj, with its kind and apiVersion, as the JSON body of req.
func kubeBody(req *rest.Request, obj any, kind string, gv schema.GroupVersion) error {
	if m, ok := obj.(kubeObject); ok {
		m.GetObjectKind().SetGroupVersionKind(gv.WithKind(kind))
	}
	b, err := json.Marshal(obj)
	if err != nil {
		return err
	}
	req.SetHeader("Content-Type", "application/json").Body(b)
	return nil
}

// kubeDo runs req and reads the object it returns; an API error is a
// *apierrors.StatusError (apierrors.IsNotFound and the rest work).
func kubeDo[T any](ctx context.Context, req *rest.Request) (*T, error) {
	res := req.Do(ctx)
	if err := res.Error(); err != nil {
		return nil, err
	}
	body, err := res.Raw()
	if err != nil {
		return nil, err
	}
	out := new(T)
	if err := json.Unmarshal(body, out); err != nil {
		return nil, fmt.Errorf("kubernetes: read the API server's answer: %w", err)
	}
	return out, nil
}

type restAuth struct {
	c      rest.Interface
	params runtime.ParameterCodec
}

func (a restAuth) SelfSubjectReviews() kubeSelfSubjectReviews { return a }

func (a restAuth) Create(ctx context.Context, r *kubeSelfSubjectReview, opts metav1.CreateOptions) (*kubeSelfSubjectReview, error) {
	req := a.c.Post().Resource("selfsubjectreviews").VersionedParams(&opts, a.params)
	if err := kubeBody(req, r, "SelfSubjectReview", authGV); err != nil {
		return nil, err
	}
	return kubeDo[kubeSelfSubjectReview](ctx, req)
}
