#!/usr/bin/env bash
# tests/natlab/topo.sh — the NAT lab's network: an "internet" and two NAT routers, each with a
# private LAN behind it, all network namespaces of this machine. Nothing leaves them: no
# namespace reaches the machine's own network.
#
#   topo.sh up P                 create the namespaces P-inet, P-rd, P-dev, P-rb, P-br
#   topo.sh nat P ROUTER MODE    ROUTER rd|rb; MODE cone (MASQUERADE) | symmetric (SNAT --random-fully)
#   topo.sh udp-to-servers P block|allow   the routers drop (or pass) UDP to 198.51.100.1
#   topo.sh down P               remove them all (and every process still inside them)
#
#   P-inet  the internet: bridge br0 203.0.113.1/24 (the routers' WAN segment) and the servers'
#           address 198.51.100.1 (coturn's STUN/TURN, the snaprtcd relay hub, the page server)
#   P-rd    the device's NAT router: wan 203.0.113.10, lan 10.201.1.1/24; TCP 8080 on its WAN
#           is forwarded to the device's HTTP port (WHEP and the viewer page need it), no UDP
#   P-dev   the device: eth0 10.201.1.2/24, default route via its router
#   P-rb    the browser's NAT router: wan 203.0.113.20, lan 10.201.2.1/24
#   P-br    the browser (headless Chromium): eth0 10.201.2.2/24, default route via its router
#
# Both routers are stateful firewalls as home routers are: from the WAN they pass only replies
# (and on P-rd the forwarded TCP port). Dropping unsolicited UDP in the filter table also keeps
# conntrack from confirming an entry for it, which would otherwise take the mapping that the
# router's own outbound packet to the same peer wants and make a cone NAT pick a new port.
# Needs root, iproute2 and iptables.
set -euo pipefail

SERVERS=198.51.100.1
INET_GW=203.0.113.1
INET_VOID=203.0.113.254
DEVICE=10.201.1.2
DEVICE_HTTP_PORT=8080

ns_exec() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# router P NAME WAN_ADDR LAN_PREFIX (e.g. 10.201.1) HOST_NS
add_router() {
  local p=$1 name=$2 wan=$3 lan=$4 host=$5
  local r="$p-$name"
  ip netns add "$r"
  ip netns add "$host"
  # WAN: veth "wan" in the router, its peer "$name" on the internet's bridge.
  ip -n "$r" link add wan type veth peer name "$name" netns "$p-inet"
  ip -n "$p-inet" link set "$name" master br0 up
  ip -n "$r" addr add "$wan/24" dev wan
  # LAN: veth "lan" in the router, its peer "eth0" in the host's namespace.
  ip -n "$r" link add lan type veth peer name eth0 netns "$host"
  ip -n "$r" addr add "$lan.1/24" dev lan
  ip -n "$host" addr add "$lan.2/24" dev eth0
  for n in "$r" "$host"; do ip -n "$n" link set lo up; done
  ip -n "$r" link set wan up
  ip -n "$r" link set lan up
  ip -n "$host" link set eth0 up
  ip -n "$r" route add default via "$INET_GW"
  ip -n "$host" route add default via "$lan.1"
  ns_exec "$r" sysctl -qw net.ipv4.ip_forward=1
  # The firewall: replies and (on the device's router) the forwarded port pass; nothing else
  # from the WAN does, to the router or through it.
  ns_exec "$r" iptables -A INPUT -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  ns_exec "$r" iptables -A INPUT -i wan -j DROP
  ns_exec "$r" iptables -A FORWARD -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  ns_exec "$r" iptables -A FORWARD -i wan -m conntrack --ctstate DNAT -j ACCEPT
  ns_exec "$r" iptables -A FORWARD -i wan -j DROP
  nat "$p" "$name" cone
}

nat() {
  local p=$1 name=$2 mode=$3 r="$1-$2" wan
  wan=$(ip -n "$r" -4 -o addr show dev wan | awk '{print $4}' | cut -d/ -f1)
  ns_exec "$r" iptables -t nat -F POSTROUTING
  case "$mode" in
    cone) ns_exec "$r" iptables -t nat -A POSTROUTING -o wan -j MASQUERADE ;;
    symmetric) ns_exec "$r" iptables -t nat -A POSTROUTING -o wan -j SNAT --to-source "$wan" --random-fully ;;
    *) echo "topo.sh: NAT mode $mode is not cone or symmetric" >&2; return 2 ;;
  esac
}

udp_to_servers() {
  local p=$1 what=$2 r
  for r in "$p-rd" "$p-rb"; do
    ns_exec "$r" iptables -D FORWARD -o wan -p udp -d "$SERVERS" -j DROP 2>/dev/null || true
    [ "$what" = block ] && ns_exec "$r" iptables -I FORWARD -o wan -p udp -d "$SERVERS" -j DROP
  done
  return 0
}

up() {
  local p=$1
  ip netns add "$p-inet"
  ip -n "$p-inet" link set lo up
  ip -n "$p-inet" link add br0 type bridge
  ip -n "$p-inet" addr add "$INET_GW/24" dev br0
  ip -n "$p-inet" link set br0 up
  # The servers' address sits on the bridge too (no dummy devices here); the routers reach it
  # through their default route, 203.0.113.1.
  ip -n "$p-inet" addr add "$SERVERS/24" dev br0
  # The internet's "upstream": a default route to a neighbour that no port of the bridge has,
  # so a packet to an address the lab does not route (a viewer's private host candidate, which
  # a TURN client asks coturn to relay to) vanishes as it would out there, instead of failing
  # with ENETUNREACH, which makes coturn close the whole allocation that sent it.
  ip -n "$p-inet" route add default via "$INET_VOID" dev br0
  ip -n "$p-inet" neigh replace "$INET_VOID" lladdr 02:00:00:00:00:fe dev br0 nud permanent
  add_router "$p" rd 203.0.113.10 10.201.1 "$p-dev"
  add_router "$p" rb 203.0.113.20 10.201.2 "$p-br"
  # WHEP and the viewer page: the device router forwards TCP 8080 on its WAN to the device.
  ns_exec "$p-rd" iptables -t nat -A PREROUTING -i wan -p tcp --dport "$DEVICE_HTTP_PORT" \
    -j DNAT --to-destination "$DEVICE:$DEVICE_HTTP_PORT"
}

down() {
  local p=$1 n pid
  for n in "$p-br" "$p-dev" "$p-rb" "$p-rd" "$p-inet"; do
    [ -e "/run/netns/$n" ] || continue
    # Whatever still runs in it (a browser, a daemon, coturn after a failed test) goes first.
    for pid in $(ip netns pids "$n" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$n" 2>/dev/null || true
  done
}

cmd=${1:-}
case "$cmd" in
  up) up "$2" ;;
  down) down "$2" ;;
  nat) nat "$2" "$3" "$4" ;;
  udp-to-servers) udp_to_servers "$2" "$3" ;;
  *) sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
