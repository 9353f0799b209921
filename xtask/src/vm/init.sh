#!/bin/busybox sh
# PID 1 of the test guests of `./x integration-test vm` (xtask/src/vm/). Mounts what
# the tests expect of a Linux host, loads the modules, runs every test binary of
# /netns-vm/plan and reports on the serial console with lines starting with the
# marker below, which the host parses. Then powers off; the host never waits on us
# for anything but the console.
M='@@netns-vm@@'
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
# /usr/local/sbin holds the host's iproute2 and bpftool: they go before busybox.
export PATH=/usr/local/sbin:/usr/local/bin:/sbin:/usr/sbin:/bin:/usr/bin HOME=/root TERM=dumb

mounted() { mkdir -p "$3" && mount -t "$1" "$2" "$3" || echo "$M warning cannot mount $1 on $3"; }
mounted proc proc /proc
mounted sysfs sysfs /sys
mounted devtmpfs devtmpfs /dev
# No tmpfs over /run or /tmp: the initramfs root is writable already, and the
# workspace (with the tests' working directories) may itself live under /tmp.
mounted tmpfs tmpfs /dev/shm
mounted devpts devpts /dev/pts
# cgroup v2 where most nodes have it; the tests find the mount themselves.
mounted cgroup2 cgroup2 /sys/fs/cgroup
mounted bpf bpf /sys/fs/bpf
mounted debugfs debugfs /sys/kernel/debug
mounted tracefs tracefs /sys/kernel/tracing
hostname netns-vm
# iproute2 keeps named namespaces in /var/run/netns.
mkdir -p /var && ln -s /run /var/run
echo "$M kernel $(uname -r)"

while read -r name file; do
    if insmod "/netns-vm/$file" && [ -d "/sys/module/$name" ]; then
        echo "$M module $name ok"
    else
        echo "$M module $name failed"
    fi
done < /netns-vm/modules.list

ip link set lo up || echo "$M warning cannot bring lo up"

# Exports NETNS_TEST_IN_VM, NETNS_TEST_SKIP_FILE and what the host passes on, and
# sets "$@" to the arguments for every test binary.
. /netns-vm/env
mkdir -p "$(dirname "$NETNS_TEST_SKIP_FILE")"

while read -r name exe dir; do
    : > "$NETNS_TEST_SKIP_FILE"
    echo "$M begin $name"
    (cd "$dir" && exec "$exe" "$@") < /dev/null 2>&1
    rc=$?
    # A test that cannot run in a VM writes "TEST<TAB>REASON" lines to the skip file.
    while IFS= read -r line; do
        echo "$M skip $name $line"
    done < "$NETNS_TEST_SKIP_FILE"
    echo "$M end $name $rc"
done < /netns-vm/plan

echo "$M done"
sync
poweroff -f
# Not reached unless poweroff failed; the host's timeout is the last resort.
echo o > /proc/sysrq-trigger
sleep 1000
