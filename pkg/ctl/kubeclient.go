package ctl

import (
	"context"
	"fmt"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
)

// The Kubernetes API as mailfwdctl uses it: ConfigMaps, Secrets and
// Namespaces of core/v1, and SelfSubjectReviews for the audit trail. It is
// client-go's REST client over a scheme of just these two API groups: the
// typed clients (k8s.io/client-go/kubernetes/typed/...) import
// k8s.io/client-go/kubernetes/scheme, which registers every API group of
// Kubernetes and linked about a third of the binary (issue 21).

// kubeObjects is the part of a typed resource client mailfwdctl calls, with
// client-go's method shapes.
type kubeObjects[T runtime.Object] interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (T, error)
	Create(ctx context.Context, obj T, opts metav1.CreateOptions) (T, error)
	Update(ctx context.Context, obj T, opts metav1.UpdateOptions) (T, error)
}

// kubeCoreV1 is the core/v1 client mailfwdctl uses.
type kubeCoreV1 interface {
	ConfigMaps(namespace string) kubeObjects[*corev1.ConfigMap]
	Secrets(namespace string) kubeObjects[*corev1.Secret]
	Namespaces() kubeObjects[*corev1.Namespace]
}

// kubeSelfSubjectReviews asks the API server who we are.
type kubeSelfSubjectReviews interface {
	Create(ctx context.Context, r *authenticationv1.SelfSubjectReview, opts metav1.CreateOptions) (*authenticationv1.SelfSubjectReview, error)
}

// kubeAuthenticationV1 is the authentication/v1 client mailfwdctl uses.
type kubeAuthenticationV1 interface {
	SelfSubjectReviews() kubeSelfSubjectReviews
}

// newKubeClient makes the core/v1 and authentication/v1 clients for rc.
func newKubeClient(rc *rest.Config) (coreClient, error) {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, authenticationv1.AddToScheme} {
		if err := add(scheme); err != nil {
			return nil, err
		}
	}
	// Status and the other unversioned meta types, as client-go's scheme.
	metav1.AddToGroupVersion(scheme, schema.GroupVersion{Version: "v1"})
	codecs := serializer.NewCodecFactory(scheme)
	params := runtime.NewParameterCodec(scheme)
	core, err := restFor(rc, codecs, corev1.SchemeGroupVersion, "/api")
	if err != nil {
		return nil, err
	}
	auth, err := restFor(rc, codecs, authenticationv1.SchemeGroupVersion, "/apis")
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

func (c restCore) ConfigMaps(ns string) kubeObjects[*corev1.ConfigMap] {
	return restObjects[*corev1.ConfigMap]{c: c.c, params: c.params, ns: ns, resource: "configmaps", new: func() *corev1.ConfigMap { return &corev1.ConfigMap{} }}
}

func (c restCore) Secrets(ns string) kubeObjects[*corev1.Secret] {
	return restObjects[*corev1.Secret]{c: c.c, params: c.params, ns: ns, resource: "secrets", new: func() *corev1.Secret { return &corev1.Secret{} }}
}

func (c restCore) Namespaces() kubeObjects[*corev1.Namespace] {
	return restObjects[*corev1.Namespace]{c: c.c, params: c.params, resource: "namespaces", new: func() *corev1.Namespace { return &corev1.Namespace{} }}
}

// restObjects is one resource (namespaced when ns is set), as the typed
// clients call it.
type restObjects[T interface {
	runtime.Object
	GetName() string
}] struct {
	c        rest.Interface
	params   runtime.ParameterCodec
	ns       string
	resource string
	new      func() T
}

func (o restObjects[T]) Get(ctx context.Context, name string, opts metav1.GetOptions) (T, error) {
	out := o.new()
	err := o.c.Get().NamespaceIfScoped(o.ns, o.ns != "").Resource(o.resource).Name(name).
		VersionedParams(&opts, o.params).Do(ctx).Into(out)
	return out, err
}

func (o restObjects[T]) Create(ctx context.Context, obj T, opts metav1.CreateOptions) (T, error) {
	out := o.new()
	err := o.c.Post().NamespaceIfScoped(o.ns, o.ns != "").Resource(o.resource).
		VersionedParams(&opts, o.params).Body(obj).Do(ctx).Into(out)
	return out, err
}

func (o restObjects[T]) Update(ctx context.Context, obj T, opts metav1.UpdateOptions) (T, error) {
	out := o.new()
	err := o.c.Put().NamespaceIfScoped(o.ns, o.ns != "").Resource(o.resource).Name(obj.GetName()).
		VersionedParams(&opts, o.params).Body(obj).Do(ctx).Into(out)
	return out, err
}

type restAuth struct {
	c      rest.Interface
	params runtime.ParameterCodec
}

func (a restAuth) SelfSubjectReviews() kubeSelfSubjectReviews { return a }

func (a restAuth) Create(ctx context.Context, r *authenticationv1.SelfSubjectReview, opts metav1.CreateOptions) (*authenticationv1.SelfSubjectReview, error) {
	out := &authenticationv1.SelfSubjectReview{}
	err := a.c.Post().Resource("selfsubjectreviews").VersionedParams(&opts, a.params).Body(r).Do(ctx).Into(out)
	return out, err
}
