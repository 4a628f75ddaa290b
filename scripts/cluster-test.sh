#!/usr/bin/env bash
# make test-cluster: a real single-node Kubernetes cluster inside a network
# namespace that this script creates and removes, running the quickstart and
# the chart; tests/cluster (build tag "cluster") drives the checks.
#
# Network rule: everything (etcd, apiserver, controller-manager, scheduler,
# containerd, kubelet, kube-proxy, the pod bridge, every pod, the test driver)
# runs inside netns $NS, which has loopback, a port-less bridge as the "node" interface and no
# route out. Nothing is added to the host's interfaces or iptables; images are
# imported from ~/.cache/mailfwd/images, never pulled.
#
# Host changes, all undone by the EXIT trap even when a step fails: the netns,
# cgroups under /sys/fs/cgroup/*/$NS, the pod netns containerd creates in
# /run/netns (cni-*), mounts and files under $WORK.
set -euo pipefail

NS="${MAILFWD_CLUSTER_NETNS:-mailfwd-ct}"
KUBE_VERSION=v1.32.13
ETCD_VERSION=v3.5.21
HELM_VERSION=v3.22.0
NODE_IP=10.200.0.1
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/16
DNS_IP=10.96.0.10
NODE_NAME=mailfwd-node

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cache="${MAILFWD_CACHE:-$HOME/.cache/mailfwd}"
bin="$cache/bin"
images="$cache/images"
log() { printf '%s cluster: %s\n' "$(date -u +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "needs root (network namespaces, containerd, kubelet)"
for c in ip nsenter containerd containerd-shim-runc-v2 runc ctr iptables conntrack openssl; do
	command -v "$c" >/dev/null || die "$c missing: apt-get install containerd runc containernetworking-plugins conntrack iptables (make test-cluster does)"
done
[[ -x /usr/lib/cni/bridge ]] || die "/usr/lib/cni/bridge missing (containernetworking-plugins)"
for b in kube-apiserver kubectl kubelet kube-controller-manager kube-scheduler kube-proxy; do
	[[ -x "$bin/$b-$KUBE_VERSION" ]] || die "$bin/$b-$KUBE_VERSION missing: make tools cluster-tools"
done
[[ -x "$bin/etcd-$ETCD_VERSION" && -x "$bin/helm-$HELM_VERSION" ]] || die "etcd/helm missing: make tools"
ip netns list | grep -qw "$NS" && die "netns $NS exists: another cluster test runs (or a crashed one: ip netns del $NS)"

WORK="$(mktemp -d /tmp/mfct.XXXXXX)"
chmod 755 "$WORK"
CG_CONTROLLERS=()
for d in /sys/fs/cgroup/*/; do
	d="${d%/}"
	[[ -f "$d/cgroup.procs" ]] && CG_CONTROLLERS+=("$d")
done
PIDS=()
netns_before="$(ls /run/netns 2>/dev/null || true)"
# nsenter, not `ip netns exec`: that one mounts a fresh /sys, which hides the
# cgroup mounts kubelet and runc need.
ns() { nsenter --net="/run/netns/$NS" -- "$@"; }

# kill_cgroup_procs: SIGKILL everything in our cgroup tree (containers,
# containers being started) until two rounds in a row find nothing.
kill_cgroup_procs() {
	local empty=0 n procs d
	for n in $(seq 20); do
		procs=""
		for d in "${CG_CONTROLLERS[@]}"; do
			[[ -d "$d/$NS" ]] && procs+=" $(find "$d/$NS" -name cgroup.procs -exec cat {} + 2>/dev/null)"
		done
		if [[ -z "${procs//[[:space:]]/}" ]]; then
			((++empty >= 2)) && return 0
		else
			empty=0
			log "killing $(wc -w <<<"$procs") processes left in the cgroups (round $n)"
			xargs -r kill -9 <<<"$procs" 2>/dev/null
		fi
		sleep 1
	done
}

teardown() {
	local rc=$?
	set +e
	log "teardown (exit $rc)"
	# The kubelet first: it would restart the containers killed below.
	[[ -n "${KUBELET_PID:-}" ]] && kill -9 "$KUBELET_PID" 2>/dev/null
	if [[ -S "$WORK/containerd.sock" ]]; then
		# Containers live in their own pod netns: stop them through containerd.
		for t in $(ns ctr --address "$WORK/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null); do
			ns ctr --address "$WORK/containerd.sock" -n k8s.io tasks kill -s SIGKILL "$t" >/dev/null 2>&1
		done
	fi
	kill_cgroup_procs
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	sleep 2
	for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
	kill_cgroup_procs
	# Every process still in our netns is one we started (or its child).
	ip netns pids "$NS" 2>/dev/null | xargs -r kill -9 2>/dev/null
	sleep 1
	# Mounts under $WORK (overlay snapshots, kubelet volumes, netns pins), deepest first.
	awk -v w="$WORK" '$2 ~ "^"w {print $2}' /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
	# Pod netns that containerd created in /run/netns.
	for n in $(ls /run/netns 2>/dev/null); do
		grep -qx "$n" <<<"$netns_before" || ip netns del "$n" 2>/dev/null
	done
	ip netns del "$NS" 2>/dev/null
	# Killed processes leave their cgroup once reaped: retry for a while.
	for _ in $(seq 15); do
		local busy=0
		for d in "${CG_CONTROLLERS[@]}"; do
			[[ -d "$d/$NS" ]] || continue
			find "$d/$NS" -depth -type d -exec rmdir {} \; 2>/dev/null
			[[ -d "$d/$NS" ]] && busy=1
		done
		((busy)) || break
		kill_cgroup_procs
	done
	if [[ -n "${MAILFWD_CLUSTER_KEEP_LOGS:-}" ]]; then
		mkdir -p "$MAILFWD_CLUSTER_KEEP_LOGS" && cp -r "$WORK/logs/." "$MAILFWD_CLUSTER_KEEP_LOGS/" 2>/dev/null
	fi
	rm -rf "$WORK"
	local left=""
	ip netns list | grep -qw "$NS" && left+=" netns"
	for d in "${CG_CONTROLLERS[@]}"; do [[ -d "$d/$NS" ]] && left+=" $d/$NS"; done
	[[ -n "$left" ]] && log "WARNING: left behind:$left"
	log "teardown done"
	exit $rc
}
trap teardown EXIT
trap 'exit 130' INT TERM

mkdir -p "$WORK"/{logs,pki,etcd,kubelet,containerd/root,containerd/state,cni/net.d,pv,pods}

# --- network namespace -------------------------------------------------------
ip netns add "$NS"
ns ip link set lo up
ns ip link add node0 type bridge
ns ip addr add "$NODE_IP/24" dev node0
ns ip link set node0 up
# A default route into a port-less bridge: Service IPs are routable for kube-proxy's
# DNAT, and anything else is dropped inside the namespace.
ns ip route add default dev node0
ns sysctl -qw net.ipv4.ip_forward=1
for d in "${CG_CONTROLLERS[@]}"; do mkdir -p "$d/$NS"; done

# --- PKI: a CA, the apiserver's serving cert, one admin token -----------------
pki="$WORK/pki"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=mailfwd-ct-ca \
	-keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=kube-apiserver \
	-keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
printf 'subjectAltName=IP:%s,IP:10.96.0.1,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n' "$NODE_IP" >"$pki/ext"
openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 2 \
	-extfile "$pki/ext" -out "$pki/apiserver.crt" 2>/dev/null
openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
# The aggregation layer (KEDA's external metrics API): a front-proxy CA and client.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=mailfwd-ct-front-proxy-ca \
	-keyout "$pki/fp-ca.key" -out "$pki/fp-ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=front-proxy-client \
	-keyout "$pki/fp-client.key" -out "$pki/fp-client.csr" 2>/dev/null
openssl x509 -req -in "$pki/fp-client.csr" -CA "$pki/fp-ca.crt" -CAkey "$pki/fp-ca.key" -CAcreateserial -days 2 \
	-out "$pki/fp-client.crt" 2>/dev/null
token="$(openssl rand -hex 24)"
echo "$token,admin,admin,system:masters" >"$pki/tokens.csv"
KUBECONFIG="$WORK/kubeconfig"
cat >"$KUBECONFIG" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: ct, cluster: {server: "https://$NODE_IP:6443", certificate-authority: "$pki/ca.crt"}}]
users: [{name: admin, user: {token: "$token"}}]
contexts: [{name: ct, context: {cluster: ct, user: admin}}]
current-context: ct
EOF
export KUBECONFIG

# start NAME CMD...: run CMD inside the netns in the background, logging to logs/NAME.log.
start() {
	local name="$1"
	shift
	# nsenter directly (not the ns function, which would run in a subshell
	# whose pid is not the daemon's): nsenter execs the daemon in place.
	nsenter --net="/run/netns/$NS" -- "$@" >"$WORK/logs/$name.log" 2>&1 &
	PIDS+=($!)
	log "started $name (pid $!)"
}
# wait_for WHAT SECONDS CMD...: poll CMD until it succeeds.
wait_for() {
	local what="$1" secs="$2"
	shift 2
	local end=$((SECONDS + secs))
	until "$@" >/dev/null 2>&1; do
		((SECONDS < end)) || { log "logs:"; tail -n 30 "$WORK"/logs/*.log >&2; die "timed out waiting for $what"; }
		sleep 1
	done
}
kubectl() { ns "$bin/kubectl-$KUBE_VERSION" --kubeconfig "$KUBECONFIG" "$@"; }

# --- control plane --------------------------------------------------------------
start etcd "$bin/etcd-$ETCD_VERSION" --name ct --data-dir "$WORK/etcd" \
	--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
	--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
	--initial-cluster ct=http://127.0.0.1:2380 --unsafe-no-fsync --log-level warn
start kube-apiserver "$bin/kube-apiserver-$KUBE_VERSION" --etcd-servers http://127.0.0.1:2379 \
	--bind-address 0.0.0.0 --advertise-address "$NODE_IP" --secure-port 6443 \
	--cert-dir "$WORK/pki/apiserver-certs" \
	--tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
	--client-ca-file "$pki/ca.crt" --token-auth-file "$pki/tokens.csv" --authorization-mode Node,RBAC \
	--service-account-issuer https://kubernetes.default.svc.cluster.local \
	--service-account-key-file "$pki/sa.key" --service-account-signing-key-file "$pki/sa.key" \
	--service-cluster-ip-range "$SERVICE_CIDR" --allow-privileged=true --profiling=false \
	--kubelet-preferred-address-types InternalIP \
	--requestheader-client-ca-file "$pki/fp-ca.crt" --requestheader-allowed-names front-proxy-client \
	--requestheader-extra-headers-prefix X-Remote-Extra- --requestheader-group-headers X-Remote-Group \
	--requestheader-username-headers X-Remote-User \
	--proxy-client-cert-file "$pki/fp-client.crt" --proxy-client-key-file "$pki/fp-client.key" \
	--enable-aggregator-routing=true
wait_for "kube-apiserver" 180 kubectl get --raw /readyz
start kube-controller-manager "$bin/kube-controller-manager-$KUBE_VERSION" --kubeconfig "$KUBECONFIG" \
	--service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
	--use-service-account-credentials=false --leader-elect=false --bind-address 127.0.0.1
start kube-scheduler "$bin/kube-scheduler-$KUBE_VERSION" --kubeconfig "$KUBECONFIG" --leader-elect=false --bind-address 127.0.0.1

# --- containerd, CNI --------------------------------------------------------------
cat >"$WORK/cni/net.d/10-bridge.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "mailfwd-ct",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}],
              "dataDir": "$WORK/cni/ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
EOF
cat >"$WORK/containerd.toml" <<EOF
version = 2
root = "$WORK/containerd/root"
state = "$WORK/containerd/state"
[grpc]
  address = "$WORK/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "mailfwd.local/pause:$KUBE_VERSION"
  # This sandbox lacks CAP_SYS_RESOURCE: without it runc fails with
  # "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$WORK/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$WORK/containerd/certs.d"
EOF
start containerd containerd --config "$WORK/containerd.toml"
wait_for containerd 60 ctr --address "$WORK/containerd.sock" version
t0=$SECONDS
for f in "$images"/*.tar "$repo"/dist/cluster-images/*.tar; do
	[[ -f "$f" ]] || continue
	ns ctr --address "$WORK/containerd.sock" -n k8s.io images import --no-unpack=false "$f" >/dev/null || die "import $f"
done
log "imported $(ns ctr --address "$WORK/containerd.sock" -n k8s.io images ls -q | grep -c mailfwd) images ($((SECONDS - t0))s)"

# --- kubelet, kube-proxy -------------------------------------------------------------
: >"$WORK/resolv.conf"
cat >"$WORK/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: /$NS
failSwapOn: false
containerRuntimeEndpoint: unix://$WORK/containerd.sock
clusterDNS: ["$DNS_IP"]
clusterDomain: cluster.local
resolvConf: $WORK/resolv.conf
address: $NODE_IP
healthzBindAddress: 127.0.0.1
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
podLogsDir: $WORK/pods
syncFrequency: 10s
serializeImagePulls: false
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
enforceNodeAllocatable: []
protectKernelDefaults: false
maxPods: 60
EOF
start kubelet "$bin/kubelet-$KUBE_VERSION" --config "$WORK/kubelet.yaml" --kubeconfig "$KUBECONFIG" \
	--root-dir "$WORK/kubelet" --node-ip "$NODE_IP" --hostname-override "$NODE_NAME" --v 1
KUBELET_PID=$!
cat >"$WORK/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$KUBECONFIG"}
mode: iptables
hostnameOverride: $NODE_NAME
clusterCIDR: 10.244.0.0/16
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# conntrack limits are host-wide sysctls: leave them alone.
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {masqueradeAll: true}
EOF
start kube-proxy "$bin/kube-proxy-$KUBE_VERSION" --config "$WORK/kube-proxy.yaml"
wait_for "node Ready" 180 kubectl wait --for=condition=Ready "node/$NODE_NAME" --timeout=5s
log "node $NODE_NAME is Ready ($SECONDS s since start)"

# --- the checks --------------------------------------------------------------
export MAILFWD_CLUSTER_WORK="$WORK" MAILFWD_CLUSTER_PV_DIR="$WORK/pv" MAILFWD_CLUSTER_CACHE="$cache"
export MAILFWD_KUBECTL="$bin/kubectl-$KUBE_VERSION" MAILFWD_HELM_BIN="$bin/helm-$HELM_VERSION"
export MAILFWD_CLUSTER_REPO="$repo" HOME="$WORK" KUBECONFIG
# The test imports the release's image archives itself (ctr), and dials from
# the node's address (outside the pod network) as a distinct client.
export MAILFWD_CLUSTER_CONTAINERD="$WORK/containerd.sock" MAILFWD_CLUSTER_NODE_IP="$NODE_IP" MAILFWD_CLUSTER_POD_CIDR="$POD_CIDR"
# In the background, so that a signal reaches the trap at once (bash runs
# traps only between foreground commands); the teardown kills it.
nsenter --net="/run/netns/$NS" -- "$@" &
PIDS+=($!)
wait $!
