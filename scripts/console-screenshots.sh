#!/usr/bin/env bash
# Screenshots of the console while 4 lab hosts pull a 1 GiB blob over 50 Mbit/s links, and
# each host's `shoal status` at that moment. Root; after
#   cargo build --release --bin shoal -p shoal -p shoal-integration --bin lab
# Writes /tmp/labshots/{hosts,tasks,task}.png (packaging/console/lab-*.png are such).
set -euo pipefail
cd /work/main
D=/var/tmp/labshot
rm -rf $D /tmp/labshots; mkdir -p /tmp/labshots
(target/release/lab swarm --hosts 4 --size 1GiB --rate 50mbit --scenarios shoal --dir $D > /tmp/labshot.log 2>&1 &)
# the scheduler's directory appears with its scheduler.toml
for i in $(seq 1 120); do
  S=$(dirname "$(find $D -name scheduler.toml 2>/dev/null | head -1)" 2>/dev/null || true)
  [ -n "$S" ] && [ "$S" != "." ] && break; sleep 1
done
echo "scheduler dir $S"
IP=$(grep -o 'listen = "[0-9.]*' $S/scheduler.toml | head -1 | cut -d'"' -f2)
echo "ip $IP"
T=$(target/release/shoal token create shot --data-dir $S)
NS=$(ip netns list | awk '{print $1}' | grep -v bridge | head -1)
echo "ns $NS"
shot() { # name url-path
  ip netns exec $NS chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir=/tmp/labshots/profile-$1 --window-size=1400,560 \
    --screenshot=/tmp/labshots/$1.png "http://$IP:8080$2?access_token=$T" >/dev/null 2>&1 || true
}
# wait until hosts report some peer traffic
for i in $(seq 1 120); do
  P=$(ip netns exec $NS curl -s -H "Authorization: Bearer $T" http://$IP:8080/console || true)
  echo "$P" | grep -q 'class="peer" data-bytes="[1-9]' && break; sleep 1
done
sleep 15
shot hosts /console
TASKS=$(ip netns exec $NS curl -s -H "Authorization: Bearer $T" http://$IP:8080/console/tasks)
ID=$(echo "$TASKS" | grep -o 'href="/console/tasks/[^"]*"' | head -1 | cut -d'"' -f2)
shot tasks /console/tasks
shot task $ID
ip netns exec $NS curl -s -H "Authorization: Bearer $T" "http://$IP:8080/console" > /tmp/labshots/hosts.html
find $D -name shoal.sock | while read s; do
  echo "== $s"; target/release/shoal status --json --socket $s | python3 -c "import json,sys; d=json.load(sys.stdin); print(d.get('host',{}).get('id'), d['downloaded'], d['uploaded'])"
done
ls -la /tmp/labshots
