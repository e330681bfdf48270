#!/usr/bin/env bash
# labnet.sh: a multi-host labq lab on one machine, one network namespace per host.
#
#   labnet.sh up                 network, Redis + Flower (central), a simulated lab per
#                                segment and a worker per lab host; prints how to submit
#   labnet.sh down               stop every process and remove every namespace and link
#                                it made; safe to run twice and after a crash
#   labnet.sh status             namespaces, addresses, links and processes
#   labnet.sh net-up             the network only (what the pytest fixture starts from)
#   labnet.sh add-host HOST Q    one more lab host on segment Q (e.g. lab-a2 lab-a)
#   labnet.sh worker HOST        start HOST's worker (after `up`)
#   labnet.sh cut|restore HOST   take HOST's switch port down / up again
#   labnet.sh exec HOST CMD...   run CMD on HOST (central, lab-a, seg-lab-a, ...)
#
# Topology (NET=10.213 by default, every address private and inside the namespaces;
# the root namespace gets one veth, PREFIX-root, onto the core so this machine reaches
# Redis and Flower):
#
#   PREFIX-sw         the switch: bridges `core` and `seg-<queue>`; no addresses
#   PREFIX-central    core0 NET.0.2: Redis :6379, Flower :5555
#   PREFIX-<host>     core0 NET.0.(10+n), seg0 NET.k.(10+n); never forwards
#   PREFIX-seg-<q>    seg0 NET.k.1 and one address per device, NET.k.(100+i), ssh :22
#
# A segment is reachable only from the hosts attached to it: nothing routes between
# the core and a segment. Every name starts with PREFIX- (default lq-); `down` finds
# what to remove by that prefix, not only from the state directory.
set -euo pipefail

PREFIX=${LQ_PREFIX:-lq}
STATE=${LQ_STATE_DIR:-/tmp/labq-netlab}
NET=${LQ_NET:-10.213}
DEVICES=${LQ_DEVICES:-8}
SEGMENTS=${LQ_SEGMENTS:-lab-a lab-b}
# host:queue pairs that `net-up` creates
HOSTS=${LQ_HOSTS:-lab-a:lab-a lab-b:lab-b}
GRACE=${LQ_DOWN_GRACE:-15}
ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [[ -z ${LQ_PYTHON:-} ]]; then
  if [[ -x $ROOT_DIR/.venv/bin/python ]]; then LQ_PYTHON=$ROOT_DIR/.venv/bin/python; else LQ_PYTHON=python3; fi
fi
SW=$PREFIX-sw
CENTRAL=$PREFIX-central
TOPO=$STATE/topology

die() { echo "labnet: $*" >&2; exit 1; }
ns_of() { case $1 in central) echo "$CENTRAL" ;; *) echo "$PREFIX-$1" ;; esac; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
our_namespaces() { ip netns list | awk '{print $1}' | grep -E "^${PREFIX}-" || true; }

new_ns() {
  ip netns add "$1"
  in_ns "$1" ip link set lo up
  # A lab host must not route between the core and its segment.
  # (through /proc, not sysctl: a slim CI image may lack procps)
  in_ns "$1" sh -c 'echo 0 >/proc/sys/net/ipv4/ip_forward; echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6 2>/dev/null || true'
}

# veth NS IFACE ADDR/LEN BRIDGE PORT: IFACE in NS, its peer PORT on BRIDGE in the switch.
veth() {
  local ns=$1 iface=$2 addr=$3 bridge=$4 port=$5
  ip link add "$iface" netns "$ns" type veth peer name "$port" netns "$SW"
  ip -n "$SW" link set "$port" master "$bridge" up
  ip -n "$ns" addr add "$addr" dev "$iface"
  ip -n "$ns" link set "$iface" up
}

segment_index() { awk -v q="$1" '$1 == "segment" && $2 == q {print $3}' "$TOPO"; }

net_up() {
  [[ -z $(our_namespaces) ]] || die "namespaces ${PREFIX}-* exist already; run '$0 down' first"
  ! ip link show "$PREFIX-root" >/dev/null 2>&1 || die "link $PREFIX-root exists; run '$0 down' first"
  ! ip route show | grep -q "^$NET\.0\.0/24" || die "$NET.0.0/24 is routed here already; set LQ_NET"
  mkdir -p "$STATE/pids" "$STATE/logs"
  : >"$TOPO"
  new_ns "$SW"
  ip -n "$SW" link add core type bridge
  ip -n "$SW" link set core up
  new_ns "$CENTRAL"
  veth "$CENTRAL" core0 "$NET.0.2/24" core central
  echo "central $CENTRAL $NET.0.2" >>"$TOPO"
  # The root namespace's one link: this machine reaches Redis and Flower through it.
  ip link add "$PREFIX-root" type veth peer name root netns "$SW"
  ip -n "$SW" link set root master core up
  ip addr add "$NET.0.1/24" dev "$PREFIX-root"
  ip link set "$PREFIX-root" up
  echo "root $PREFIX-root $NET.0.1" >>"$TOPO"
  local k=0 q ns i addrs
  for q in $SEGMENTS; do
    k=$((k + 1))
    ns=$PREFIX-seg-$q
    new_ns "$ns"
    ip -n "$SW" link add "seg-$q" type bridge
    ip -n "$SW" link set "seg-$q" up
    veth "$ns" seg0 "$NET.$k.1/24" "seg-$q" "d-$q"
    addrs=""
    for ((i = 1; i <= DEVICES; i++)); do
      ip -n "$ns" addr add "$NET.$k.$((100 + i))/24" dev seg0
      addrs+=" $NET.$k.$((100 + i))"
    done
    echo "segment $q $k $ns$addrs" >>"$TOPO"
  done
  local pair
  for pair in $HOSTS; do add_host "${pair%%:*}" "${pair#*:}"; done
}

add_host() {
  local host=$1 queue=$2 ns=$PREFIX-$1 k n
  [[ -f $TOPO ]] || die "the network is not up; run '$0 net-up' or '$0 up'"
  [[ $host =~ ^[a-z0-9][a-z0-9-]{0,11}$ ]] || die "host name $host: use 1-12 of a-z, 0-9, '-'"
  [[ $host != central && $host != sw && $host != root && $host != seg-* ]] || die "host name $host is reserved"
  ! ip netns list | awk '{print $1}' | grep -qx "$ns" || die "host $host exists already"
  k=$(segment_index "$queue")
  [[ -n $k ]] || die "no segment $queue; segments: $(awk '$1 == "segment" {printf "%s ", $2}' "$TOPO")"
  n=$(awk '$1 == "host" {n++} END {print n + 1}' "$TOPO")
  new_ns "$ns"
  veth "$ns" core0 "$NET.0.$((10 + n))/24" core "c-$host"
  veth "$ns" seg0 "$NET.$k.$((10 + n))/24" "seg-$queue" "s-$host"
  echo "host $host $ns $queue $NET.0.$((10 + n)) $NET.$k.$((10 + n))" >>"$TOPO"
}

host_queue() { awk -v h="$1" '$1 == "host" && $2 == h {print $4}' "$TOPO"; }

set_port() {
  local host=$1 state=$2
  [[ -n $(host_queue "$host") ]] || die "no lab host $host"
  # The switch side: the host keeps its address and sockets, packets just vanish.
  ip -n "$SW" link set "c-$host" "$state"
}

# spawn NAME NS CMD...: run CMD in NS in the background, in its own session; record its pid.
spawn() {
  local name=$1 ns=$2; shift 2
  setsid ip netns exec "$ns" "$@" </dev/null >>"$STATE/logs/$name.log" 2>&1 &
  echo $! >"$STATE/pids/$name.pid"
}

lab_env() {
  # shellcheck disable=SC1091
  source "$STATE/lab.env"
  export LABQ_BROKER_URL LABQ_TESTBED LABQ_FLOWER_ADDRESS LABQ_FLOWER_PORT LABQ_FLOWER_PASSWORD
  export LABQ_STATE_DIR=$STATE LABQ_CONCURRENCY=${LQ_CONCURRENCY:-2}
}

start_worker() {
  local host=$1 queue
  queue=$(host_queue "$host")
  [[ -n $queue ]] || die "no lab host $host"
  lab_env
  spawn "worker-$host" "$PREFIX-$host" "$LQ_PYTHON" -m labq worker --queues "$queue" --name "$host"
  echo "worker $host (queue $queue) started; log $STATE/logs/worker-$host.log"
}

up() {
  net_up
  local central_ip password flower_password
  central_ip=$(awk '$1 == "central" {print $3}' "$TOPO")
  password=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
  flower_password=$(head -c 12 /dev/urandom | base64 | tr '+/' '-_')
  mkdir -p "$STATE/redis"
  cat >"$STATE/redis/redis.conf" <<EOF
bind $central_ip
port 6379
protected-mode yes
requirepass $password
dir "$STATE/redis"
appendonly yes
appendfsync everysec
save ""
maxmemory-policy noeviction
daemonize no
EOF
  chmod 600 "$STATE/redis/redis.conf"
  spawn redis "$CENTRAL" "$("$LQ_PYTHON" -c 'from labq.embedded.redis_server import find_redis_server as f; print(f())')" \
    "$STATE/redis/redis.conf"
  "$LQ_PYTHON" -m labq.embedded.netlab testbeds "$TOPO" "$STATE" >/dev/null
  cat >"$STATE/lab.env" <<EOF
LABQ_BROKER_URL='redis://:$password@$central_ip:6379/0'
LABQ_TESTBED='$STATE/testbed.yaml'
LABQ_FLOWER_ADDRESS='$central_ip'
LABQ_FLOWER_PORT=5555
LABQ_FLOWER_PASSWORD='$flower_password'
EOF
  chmod 600 "$STATE/lab.env"
  local q
  for q in $SEGMENTS; do
    spawn "sim-$q" "$PREFIX-seg-$q" "$LQ_PYTHON" -m labq.embedded.sim --testbed "$STATE/testbed-$q.yaml" \
      --control-port 0 --ready-file "$STATE/sim-$q.ready"
  done
  lab_env
  spawn flower "$CENTRAL" "$LQ_PYTHON" -m labq flower
  local host
  for host in $(awk '$1 == "host" {print $2}' "$TOPO"); do start_worker "$host"; done
  cat <<EOF
lab up: Redis and Flower on $central_ip (Flower user labq, password in $STATE/lab.env)
To submit from this machine:
  set -a; source $STATE/lab.env; set +a
  labq devices
EOF
}

down() {
  local ns pids pid deadline f
  # Recorded pids first (a process may have left its namespace's view), then every
  # process still inside one of our namespaces: SIGTERM, a grace period, SIGKILL.
  pids=""
  if [[ -d $STATE/pids ]]; then
    for f in "$STATE"/pids/*.pid; do
      if [[ -f $f ]]; then pids+=" $(cat "$f")"; fi
    done
  fi
  for ns in $(our_namespaces); do pids+=" $(ip netns pids "$ns" | tr '\n' ' ')"; done
  for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
  deadline=$((SECONDS + GRACE))
  while ((SECONDS < deadline)); do
    local left=""
    for ns in $(our_namespaces); do left+=$(ip netns pids "$ns"); done
    for pid in $pids; do
      if kill -0 "$pid" 2>/dev/null; then left+=" $pid"; fi
    done
    if [[ -z ${left// /} ]]; then break; fi
    sleep 0.2
  done
  for ns in $(our_namespaces); do
    for pid in $(ip netns pids "$ns"); do kill -KILL "$pid" 2>/dev/null || true; done
  done
  for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
  for ns in $(our_namespaces); do ip netns del "$ns" 2>/dev/null || true; done
  ip link del "$PREFIX-root" 2>/dev/null || true
  rm -rf "$STATE/pids" "$TOPO" "$STATE/lab.env"
  [[ -z $(our_namespaces) ]] || die "namespaces left: $(our_namespaces | tr '\n' ' ')"
  ! ip -o link show | grep -q ": ${PREFIX}-" || die "links left: $(ip -o link show | grep ": ${PREFIX}-")"
}

status() {
  local ns
  if [[ -f $TOPO ]]; then echo "# topology ($TOPO)"; cat "$TOPO"; else echo "# no topology at $TOPO"; fi
  for ns in $(our_namespaces); do
    echo "# $ns"
    ip -n "$ns" -br addr show | grep -v '^lo ' || true
    local pids
    pids=$(ip netns pids "$ns" | tr '\n' ',')
    if [[ -n $pids ]] && command -v ps >/dev/null; then ps -o pid=,args= -p "${pids%,}" | cut -c1-120; fi
  done
  ip -br addr show "$PREFIX-root" 2>/dev/null || true
}

cmd=${1:-}
shift || true
case $cmd in
  up) up ;;
  down) down ;;
  status) status ;;
  net-up) net_up ;;
  add-host) [[ $# -eq 2 ]] || die "usage: $0 add-host HOST QUEUE"; add_host "$1" "$2" ;;
  worker) [[ $# -eq 1 ]] || die "usage: $0 worker HOST"; start_worker "$1" ;;
  cut) [[ $# -eq 1 ]] || die "usage: $0 cut HOST"; set_port "$1" down ;;
  restore) [[ $# -eq 1 ]] || die "usage: $0 restore HOST"; set_port "$1" up ;;
  exec) [[ $# -ge 2 ]] || die "usage: $0 exec HOST CMD..."; h=$1; shift; in_ns "$(ns_of "$h")" "$@" ;;
  *) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; [[ -z $cmd ]] || exit 2 ;;
esac
