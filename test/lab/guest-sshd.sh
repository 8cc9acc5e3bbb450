# Sourced INSIDE a lab guest (test/lab/*-guest.sh): the "remote" host of the ssh scenarios. A private
# sshd on the guest's loopback (port 2222, keys in $K), and $LAB_WORK/ta-remote, the thinarchive
# command ssh runs there: sshd gives remote commands a minimal environment, the wrapper restores what
# the lab's commands need (and its own state directory: the receiving side's target locks and journals).
# Needs: LAB_WORK, TA_LAUNCHER, THINARCHIVE_DIST. Defines: K, SSHO (ssh options for the CLI's -o),
# sshd_start, sshd_stop, ssh_ok. Starts sshd.
K=$LAB_WORK/ssh
ip link set lo up
mkdir -p "$K" /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$K/host"
ssh-keygen -q -t ed25519 -N '' -f "$K/client"
cp "$K/client.pub" "$K/authorized_keys"
cat > "$K/sshd_config" <<EOF
Port 2222
ListenAddress 127.0.0.1
HostKey $K/host
PidFile $K/sshd.pid
AuthorizedKeysFile $K/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 64:30:128
LogLevel ERROR
SetEnv SHLVL=1
EOF
echo "[127.0.0.1]:2222 $(cut -d' ' -f1,2 "$K/host.pub")" > "$K/known_hosts"
sshd_start() { /usr/sbin/sshd -f "$K/sshd_config" -E "$K/sshd.log"; }
sshd_stop() { kill "$(cat "$K/sshd.pid")"; while ssh_ok; do sleep 0.2; done; }
ssh_ok() { ssh -p 2222 -i "$K/client" -o UserKnownHostsFile="$K/known_hosts" -o BatchMode=yes -o ConnectTimeout=15 root@127.0.0.1 true 2> /dev/null; }
cat > "$LAB_WORK/ta-remote" <<EOF
#!/bin/bash
export PATH='$PATH' LVM_SYSTEM_DIR='$LVM_SYSTEM_DIR' DM_DISABLE_UDEV=1 LVM_SUPPRESS_FD_WARNINGS=1
export MODPROBE_OPTIONS='$MODPROBE_OPTIONS' HOME='$HOME' LC_ALL=C THINARCHIVE_STATE_DIR='$LAB_WORK/remote-state'
export THINARCHIVE_DIST='$THINARCHIVE_DIST'
exec node '$TA_LAUNCHER' "\$@"
EOF
chmod +x "$LAB_WORK/ta-remote"
SSHO=(-o "IdentityFile=$K/client" -o "UserKnownHostsFile=$K/known_hosts" -o BatchMode=yes)
sshd_start
