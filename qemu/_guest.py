"""What runs inside the guest: the initramfs ``/init`` and the second stage.

Boot: the kernel runs ``/init`` from our small initramfs (static busybox plus
the 9p and overlay modules). It mounts the lab root, exported read-only by QEMU
over 9p with tag ``root``, under a tmpfs overlay, copies the second stage into
the overlay and ``switch_root``s to it. The second stage (PID 1 in the real
root) mounts the usual filesystems, the checkout (tag ``ava``, read-only, at
``/mnt/ava``) and the scratch share (tag ``scratch`` at ``/mnt/scratch``),
finds the three virtio-serial ports, runs ``/mnt/scratch/.ava/run.sh`` as root
with its stdout and stderr on the ``ava.out`` and ``ava.err`` ports, reports
the exit status on ``ava.ctl`` and powers off.

Control protocol on ``ava.ctl`` (lines, guest to host): ``start UPTIME`` just
before the command runs, ``exit STATUS`` after it; the host answers ``bye``
to ``exit`` once it has the status, and the guest then powers off (within 3 s
even without an answer). ``fail MESSAGE`` reports a boot problem.
"""

from __future__ import annotations

# Paths and names shared by the host and guest sides.
GUEST_SRC = "/mnt/ava"
GUEST_SCRATCH = "/mnt/scratch"
CONTROL_DIR = ".ava"          # inside the scratch directory
RUN_SCRIPT = "run.sh"         # inside CONTROL_DIR
PORT_CTL = "ava.ctl"
PORT_OUT = "ava.out"
PORT_ERR = "ava.err"
MOUNT_TAG_ROOT = "root"
MOUNT_TAG_SRC = "ava"
MOUNT_TAG_SCRATCH = "scratch"

# Modules the initramfs loads, in dependency order (virtio, virtio_pci and
# virtio_console are built into Debian's kernel).
INITRAMFS_MODULES = ("netfs", "9pnet", "9pnet_virtio", "9p", "overlay")

NINEP_OPTS = "trans=virtio,version=9p2000.L,msize=262144"

INIT = r"""#!/bin/busybox sh
# ava-vdev lab initramfs: mount the 9p root under a tmpfs overlay, switch to it.
/bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() {
    echo "ava-init: $*" > /dev/console
    # Dump what the kernel said, then stop: QEMU exits (-no-reboot).
    poweroff -f
}
for m in @MODULES@; do
    insmod /lib/modules/$m.ko || fail "insmod $m failed"
done
mkdir -p /lower /rw /newroot
mount -t 9p -o @NINEP@,ro,cache=loose @TAG_ROOT@ /lower || fail "cannot mount the 9p root"
mount -t tmpfs -o mode=0755 tmpfs /rw || fail "cannot mount the overlay tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot \
    || fail "cannot mount the overlay"
cp /stage2 /newroot/ava-init && chmod 0755 /newroot/ava-init || fail "cannot install stage 2"
mount --move /dev /newroot/dev || fail "cannot move /dev"
umount /sys /proc
exec switch_root /newroot /ava-init
"""

STAGE2 = r"""#!/bin/sh
# ava-vdev lab, second stage: PID 1 in the overlay root. Runs one command.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TERM=dumb PYTHONDONTWRITEBYTECODE=1
export AVA_SRC=@SRC@ AVA_SCRATCH=@SCRATCH@
say() { echo "ava-init: $*" > /dev/console; }
halt() { sync; busybox poweroff -f; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mkdir -p /dev/pts /dev/shm /dev/hugepages /run/ava
mount -t devpts -o gid=5,mode=620 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
mount -t hugetlbfs hugetlbfs /dev/hugepages
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
hostname ava-guest
busybox ip link set lo up 2>/dev/null
mkdir -p @SRC@ @SCRATCH@
port() {
    for d in /sys/class/virtio-ports/*; do
        [ "$(cat "$d/name" 2>/dev/null)" = "$1" ] && { echo "/dev/${d##*/}"; return 0; }
    done
    return 1
}
i=0
until CTL=$(port @PORT_CTL@) && OUT=$(port @PORT_OUT@) && ERR=$(port @PORT_ERR@); do
    i=$((i + 1))
    [ $i -gt 200 ] && { say "virtio-serial ports missing"; halt; }
    sleep 0.05
done
exec 3<>"$CTL"
fail() { say "$*"; echo "fail $*" >&3; halt; }
mount -t 9p -o @NINEP@,ro,cache=loose @TAG_SRC@ @SRC@ || fail "cannot mount the checkout (9p tag @TAG_SRC@)"
mount -t 9p -o @NINEP@,cache=mmap @TAG_SCRATCH@ @SCRATCH@ \
  || fail "cannot mount the scratch share (9p tag @TAG_SCRATCH@)"
[ -r @SCRATCH@/@CONTROL@/@RUN@ ] || fail "@SCRATCH@/@CONTROL@/@RUN@ is missing"
# The command writes to pipes (reopenable through /dev/stdout), relayed to the ports.
mkfifo /run/ava/out /run/ava/err
cat /run/ava/out > "$OUT" & relay_out=$!
cat /run/ava/err > "$ERR" & relay_err=$!
read up idle < /proc/uptime
echo "start $up" >&3
cd @SCRATCH@
sh @SCRATCH@/@CONTROL@/@RUN@ < /dev/null > /run/ava/out 2> /run/ava/err
status=$?
cd /
# Background processes of the command may hold the pipes open: stop relaying after 2 s.
( sleep 2; kill $relay_out $relay_err 2>/dev/null ) &
wait $relay_out $relay_err
sync
echo "exit $status" >&3
timeout 3 head -n 1 <&3 > /dev/null 2>&1
halt
"""


def _fill(template: str) -> str:
    values = {
        "@MODULES@": " ".join(INITRAMFS_MODULES),
        "@NINEP@": NINEP_OPTS,
        "@TAG_ROOT@": MOUNT_TAG_ROOT,
        "@TAG_SRC@": MOUNT_TAG_SRC,
        "@TAG_SCRATCH@": MOUNT_TAG_SCRATCH,
        "@SRC@": GUEST_SRC,
        "@SCRATCH@": GUEST_SCRATCH,
        "@CONTROL@": CONTROL_DIR,
        "@RUN@": RUN_SCRIPT,
        "@PORT_CTL@": PORT_CTL,
        "@PORT_OUT@": PORT_OUT,
        "@PORT_ERR@": PORT_ERR,
    }
    for key, value in values.items():
        template = template.replace(key, value)
    assert "@" not in template.replace("$@", ""), "unfilled placeholder"
    return template


def init_script() -> str:
    """The initramfs ``/init``."""
    return _fill(INIT)


def stage2_script() -> str:
    """The second stage, installed as ``/ava-init`` in the overlay."""
    return _fill(STAGE2)
