#!/usr/bin/env bash
# A real SLURM (with slurmdbd + MariaDB accounting) of two nodes on this one host, for tests and CI.
#
#   bash tests/slurm/cluster.sh start    # install if needed, start, wait until the node is idle
#   bash tests/slurm/cluster.sh status   # what runs, sinfo
#   bash tests/slurm/cluster.sh stop     # stop exactly the daemons `start` recorded (idempotent)
#   bash tests/slurm/cluster.sh clean    # stop, then delete the scratch dir (next start is from scratch)
#
# Everything lives in ${MICRODIT_SLURM_DIR:-/tmp/microdit-slurm}. The only things touched outside it are the apt
# packages, /run/munge and /etc/munge/munge.key (created only when missing), because munged and Slurm's auth/munge
# plugin look there. Recipe and pitfalls: shared/STACK.md, "A real one-node SLURM on this machine".
# Callers need SLURM_CONF: `start` prints it and writes "$DIR/env" (source it, or see tests/slurm/README.md).
set -euo pipefail

DIR="${MICRODIT_SLURM_DIR:-/tmp/microdit-slurm}"
CLUSTER="microdit"
ACCOUNT="microdit"
PARTITION="debug"
DB_PORT=3307
DB_USER="slurm"
# Only reachable on 127.0.0.1 and only by this test cluster, so a fixed password is fine.
DB_PASS="microdit-slurm-test"
# Bounds (seconds): how long `start` waits for each daemon / the node, how long `stop` waits before SIGKILL.
READY_TIMEOUT="${MICRODIT_SLURM_READY_TIMEOUT:-60}"
STOP_TIMEOUT="${MICRODIT_SLURM_STOP_TIMEOUT:-15}"

PIDS="$DIR/pids"            # lines "name pid starttime" (starttime from /proc/PID/stat guards against PID reuse)
ETC="$DIR/etc"
LOG="$DIR/log"
SLURM_CONF_FILE="$ETC/slurm.conf"
PACKAGES=(munge slurm-client slurmctld slurmd slurmdbd mariadb-server)

log() { printf '[slurm-cluster] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- process helpers ------------------------------------------------------------------------------------------
# Dead daemons linger as zombies until PID 1 reaps them, so `kill -0` says "alive": read the state from /proc.
proc_state() {  # prints the one-letter state of PID, or nothing if it is gone
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
    stat="${stat##*) }"      # comm may contain spaces/parens; fields after the last ") " are well-formed
    printf '%s' "${stat%% *}"
}
proc_starttime() {  # field 22 of /proc/PID/stat (clock ticks since boot): with the PID, identifies one process
    local stat rest f
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
    rest="${stat##*) }"
    # after "comm) " the fields are 3..; starttime is field 22 => index 19 of the remainder
    read -r -a f <<<"$rest"
    printf '%s' "${f[19]}"
}
is_alive() {  # is_alive PID STARTTIME: running (not zombie/dead) and the very same process we recorded
    local st
    st="$(proc_state "$1")"
    [[ -n "$st" && "$st" != "Z" && "$st" != "X" ]] || return 1
    [[ "$(proc_starttime "$1")" == "$2" ]]
}
record_pid() {  # record_pid NAME PID
    local st
    st="$(proc_starttime "$2")"
    [[ -n "$st" ]] || die "$1 (pid $2) exited right after start; log tails:$(log_tails)"
    printf '%s %s %s\n' "$1" "$2" "$st" >>"$PIDS"
}
# Start a daemon in the foreground mode of its own, detached into its own session so the caller's terminal
# signals (Ctrl-C, hangup) don't reach it. Without job control the background child is not a process-group
# leader, so `setsid` execs in place and $! is the daemon's own PID. stdio go to files so nobody's pipe is held.
launch() {  # launch NAME LOGFILE CMD...
    local name="$1" out="$2"
    shift 2
    setsid "$@" </dev/null >>"$out" 2>&1 &
    record_pid "$name" "$!"
}

log_tails() {
    local f
    for f in "$LOG"/*.log; do
        [[ -f "$f" ]] || continue
        printf '\n----- %s (last 20 lines) -----\n' "$f"
        tail -n 20 "$f" 2>/dev/null || true
    done
}

wait_for() {  # wait_for WHAT CMD...: retry CMD until it succeeds or READY_TIMEOUT passes
    local what="$1" deadline=$((SECONDS + READY_TIMEOUT))
    shift
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            die "$what not ready after ${READY_TIMEOUT}s; daemon log tails:$(log_tails)"
        fi
        sleep 0.5
    done
}

all_recorded_alive() {
    [[ -s "$PIDS" ]] || return 1
    local name pid st
    while read -r name pid st; do
        is_alive "$pid" "$st" || return 1
    done <"$PIDS"
}

# --- install ----------------------------------------------------------------------------------------------
install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    log "installing: ${missing[*]}"
    # No systemd here: the image's policy-rc.d refuses service starts, so apt starts no daemon of its own.
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$DIR/apt.log" 2>&1 \
        || { tail -n 30 "$DIR/apt.log" >&2; die "apt-get install failed"; }
}

# --- munge ------------------------------------------------------------------------------------------------
munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    install -d -o munge -g munge -m 0755 /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        # The Debian postinst usually creates it; never overwrite an existing key (other services may share it).
        log "creating /etc/munge/munge.key"
        install -d -o munge -g munge -m 0700 /etc/munge
        (umask 077 && dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none)
        chown munge:munge /etc/munge/munge.key
        chmod 0600 /etc/munge/munge.key
    fi
    if munge_works; then
        # Someone else's munged already serves /run/munge: use it, but it is not ours to record or stop.
        log "munged already running (not started by this script; will not be stopped)"
        return 0
    fi
    install -d -o munge -g munge -m 0700 "$DIR/munge"
    # setpriv execs (runuser would stay as a parent), so the recorded PID is munged itself.
    launch munged "$DIR/munge/munged.out" setpriv --reuid=munge --regid=munge --init-groups \
        /usr/sbin/munged --foreground --force --log-file="$DIR/munge/munged.log" \
        --pid-file="$DIR/munge/munged.pid"
    wait_for "munged" munge_works
}

# --- MariaDB ----------------------------------------------------------------------------------------------
db() { mariadb --no-defaults --socket="$DIR/mysql/mysqld.sock" --user=root "$@"; }

start_mariadb() {
    install -d -m 0700 "$DIR/mysql"
    if [[ ! -d "$DIR/mysql/data/mysql" ]]; then
        log "initialising MariaDB datadir"
        mariadb-install-db --no-defaults --user=root --datadir="$DIR/mysql/data" --skip-test-db \
            --auth-root-authentication-method=socket >"$LOG/mariadb-install.log" 2>&1 \
            || { tail -n 30 "$LOG/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
    fi
    # --no-defaults: ignore /etc/mysql (the system instance's port/datadir); small buffers: it only holds a few rows.
    launch mariadbd "$LOG/mariadbd.log" /usr/sbin/mariadbd --no-defaults --user=root \
        --datadir="$DIR/mysql/data" --socket="$DIR/mysql/mysqld.sock" --pid-file="$DIR/mysql/mysqld.pid" \
        --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve --log-error="$LOG/mariadbd.log" \
        --innodb-buffer-pool-size=64M --innodb-log-file-size=16M --innodb-lock-wait-timeout=900 --skip-log-bin
    wait_for "MariaDB" db -e 'SELECT 1'
    # Idempotent: a restart over an existing datadir just re-asserts the grants.
    db <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO '$DB_USER'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
SQL
}

# --- configs ----------------------------------------------------------------------------------------------
write_configs() {
    local host="$1" hw
    install -d -m 0755 "$ETC" "$DIR/state" "$DIR/spool/$host" "$DIR/spool/$(second_node "$host")"
    # The node line must match the hardware slurmd detects, else the node is drained as "invalid".
    hw="$(slurmd -C | head -n 1)"
    hw="${hw#NodeName=* }"
    cat >"$SLURM_CONF_FILE" <<EOF
# Generated by tests/slurm/cluster.sh; one node, everything on 127.0.0.1.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
# No cgroups without systemd: track processes by /proc and don't bind tasks.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, a job without --mem would take all the node's memory and block every other job.
DefMemPerCPU=500
# A node restored as DOWN comes back by itself once its slurmd registers.
ReturnToService=2
# scancel sends SIGTERM, then SIGKILL after KillWait (default 30 s). submitit's job wrapper ignores SIGTERM (it
# waits for USR2), so a cancelled submitit job holds its CPUs for all of KillWait: keep that short here.
KillWait=5
# Keep finished jobs visible in squeue for a while (status polling falls back on it).
MinJobAge=300
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MpiDefault=none
StateSaveLocation=$DIR/state
# Two node daemons on this one host (%n: each node's own spool, pid file and log).
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
# Two nodes on this host, told apart by their slurmd ports, so that a multi-node job runs here for real.
NodeName=$host NodeAddr=127.0.0.1 Port=6818 $hw State=UNKNOWN
NodeName=$(second_node "$host") NodeHostname=$host NodeAddr=127.0.0.1 Port=6828 $hw State=UNKNOWN
PartitionName=$PARTITION Nodes=$host,$(second_node "$host") Default=YES MaxTime=INFINITE State=UP
EOF
    # slurmdbd reads slurmdbd.conf next to SLURM_CONF, and refuses it unless it is 600 and owned by SlurmUser.
    (umask 077 && cat >"$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=$host
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$LOG/slurmdbd.log
PidFile=$DIR/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    )
    chmod 0600 "$ETC/slurmdbd.conf"
    # snakemake-executor-plugin-slurm-jobstep strips every SLURM_* variable (SLURM_CONF included) before its
    # `srun` inside the job, so a client can only find a non-default config through the environment it keeps:
    # PATH. These wrappers put SLURM_CONF back (unless one is set) and exec the real command.
    install -d -m 0755 "$DIR/bin"
    local cmd conf_q
    conf_q="$(printf '%q' "$SLURM_CONF_FILE")"   # the scratch dir may contain shell-special characters
    for cmd in srun sbatch salloc squeue scancel sacct sinfo scontrol sacctmgr sstat; do
        cat >"$DIR/bin/$cmd" <<WRAPPER
#!/bin/bash
# Generated by tests/slurm/cluster.sh: run /usr/bin/$cmd against the test cluster's config.
export SLURM_CONF="\${SLURM_CONF:-$conf_q}"
exec /usr/bin/$cmd "\$@"
WRAPPER
        chmod 0755 "$DIR/bin/$cmd"
    done
    {
        printf 'export SLURM_CONF=%q\n' "$SLURM_CONF_FILE"
        printf 'export PATH=%q:"$PATH"\n' "$DIR/bin"
    } >"$DIR/env"
}

sacctmgr_q() { SLURM_CONF="$SLURM_CONF_FILE" sacctmgr -n -P "$@"; }

setup_accounting() {
    local user
    user="$(id -un)"
    sacctmgr_q list cluster format=cluster | grep -qx "$CLUSTER" \
        || SLURM_CONF="$SLURM_CONF_FILE" sacctmgr -i add cluster "$CLUSTER" >/dev/null
    sacctmgr_q list account format=account | grep -qx "$ACCOUNT" \
        || SLURM_CONF="$SLURM_CONF_FILE" sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" \
            Description="microdit tests" Organization=microdit >/dev/null
    # Adding a cluster already creates user root in account root, so test the association, not the user.
    sacctmgr_q list assoc cluster="$CLUSTER" account="$ACCOUNT" user="$user" format=user | grep -qx "$user" \
        || SLURM_CONF="$SLURM_CONF_FILE" sacctmgr -i add user "$user" Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null
    # A default account lets snakemake's slurm plugin guess "-A microdit" without any profile setting.
    sacctmgr_q list user "$user" format=defaultaccount | grep -qx "$ACCOUNT" \
        || SLURM_CONF="$SLURM_CONF_FILE" sacctmgr -i modify user "$user" set DefaultAccount="$ACCOUNT" >/dev/null
}

second_node() { printf '%s-2' "$1"; }  # the name of the second node daemon on host $1

# --- node readiness ---------------------------------------------------------------------------------------
node_ready() {  # node_ready HOST SINCE: idle AND registered by the slurmd we started (restored state reads idle early)
    local host="$1" since="$2" state started
    state="$(SLURM_CONF="$SLURM_CONF_FILE" sinfo -h -n "$host" -o '%T' 2>/dev/null | head -n 1)"
    started="$(SLURM_CONF="$SLURM_CONF_FILE" scontrol show node "$host" 2>/dev/null \
        | grep -o 'SlurmdStartTime=[^ ]*' | cut -d= -f2)"
    [[ -n "$started" && "$started" != "None" && ! "$started" < "$since" ]] || return 1
    case "$state" in
        idle) return 0 ;;
        drain* | drained | down*)
            # Left drained/down by an earlier run (e.g. killed mid-job): our fresh slurmd is healthy, resume it.
            SLURM_CONF="$SLURM_CONF_FILE" scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true
            return 1 ;;
        *) return 1 ;;
    esac
}

# --- subcommands ------------------------------------------------------------------------------------------
cmd_start() {
    [[ "$(id -u)" == 0 ]] || die "must run as root (installs packages, runs slurmd as root)"
    install -d -m 0755 "$DIR" "$LOG"
    if all_recorded_alive; then
        log "already running (pids in $PIDS)"
        cat "$DIR/env"
        return 0
    fi
    if [[ -s "$PIDS" ]]; then
        log "a previous start is partly dead: stopping its leftovers first"
        cmd_stop
    fi
    : >"$PIDS"
    # A failed start must not leave half a cluster running: stop what was recorded (logs stay for debugging).
    trap 'rc=$?; if ((rc != 0)); then log "start failed: stopping what it started"; cmd_stop || true; fi' EXIT
    local t0=$SECONDS host since
    install_packages
    host="$(hostname -s)"
    write_configs "$host"
    # a job on the second node names it as its rendezvous host (MASTER_ADDR): resolve it, as a cluster's DNS would
    grep -qw "$(second_node "$host")" /etc/hosts || echo "127.0.0.1 $(second_node "$host")" >>/etc/hosts
    export SLURM_CONF="$SLURM_CONF_FILE"   # for the daemons started below (this process only)

    start_munge
    start_mariadb
    launch slurmdbd "$LOG/slurmdbd.out" /usr/sbin/slurmdbd -D
    wait_for "slurmdbd" sacctmgr_q list cluster
    setup_accounting
    launch slurmctld "$LOG/slurmctld.out" /usr/sbin/slurmctld -D -i
    wait_for "slurmctld" scontrol ping
    since="$(date +%Y-%m-%dT%H:%M:%S)"
    launch slurmd "$LOG/slurmd.out" /usr/sbin/slurmd -D -N "$host"
    # The second node's daemon, and so its jobs, get a /dev/shm of their own, as a second machine would: the ranks
    # of each node share a shared-memory block under a fixed name (mosaicml-streaming), which one /dev/shm for
    # both nodes would make collide. unshare and sh exec in place, so the recorded PID is slurmd's.
    launch slurmd2 "$LOG/slurmd2.out" unshare --mount --propagation private sh -c \
        'mount -t tmpfs -o size=2g,mode=1777 tmpfs /dev/shm && exec /usr/sbin/slurmd -D -N "$1"' sh \
        "$(second_node "$host")"
    wait_for "node $host idle" node_ready "$host" "$since"
    wait_for "node $(second_node "$host") idle" node_ready "$(second_node "$host")" "$since"
    wait_for "sacct" sacct -n -X -S now-1minute
    trap - EXIT
    log "ready in $((SECONDS - t0))s: partition '$PARTITION', nodes '$host' and '$(second_node "$host")', account '$ACCOUNT'"
    cat "$DIR/env"
}

stop_one() {  # stop_one NAME PID STARTTIME
    local name="$1" pid="$2" st="$3" deadline
    is_alive "$pid" "$st" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    while is_alive "$pid" "$st"; do
        if ((SECONDS >= deadline)); then
            log "$name (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
}

cmd_stop() {
    if [[ ! -s "$PIDS" ]]; then
        log "nothing recorded in $PIDS: nothing to stop"
        return 0
    fi
    local lines=() name pid st i
    mapfile -t lines <"$PIDS"
    # Cancel leftover jobs while slurmctld still runs, so no job step outlives the cluster.
    for ((i = 0; i < ${#lines[@]}; i++)); do
        read -r name pid st <<<"${lines[$i]}"
        if [[ "$name" == slurmctld ]] && is_alive "$pid" "$st"; then
            SLURM_CONF="$SLURM_CONF_FILE" timeout 10 scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
            # Let them finish (KillWait=5) so slurmd isn't killed mid-cleanup and leaves no orphan slurmstepd.
            local deadline=$((SECONDS + STOP_TIMEOUT))
            while ((SECONDS < deadline)) \
                && [[ -n "$(SLURM_CONF="$SLURM_CONF_FILE" timeout 10 squeue -h -o %i 2>/dev/null)" ]]; do
                sleep 0.5
            done
        fi
    done
    # Reverse start order: slurmd, slurmctld (flushes to slurmdbd), slurmdbd, MariaDB, munged.
    for ((i = ${#lines[@]} - 1; i >= 0; i--)); do
        read -r name pid st <<<"${lines[$i]}"
        [[ -n "$pid" ]] || continue
        stop_one "$name" "$pid" "$st"
    done
    for ((i = 0; i < ${#lines[@]}; i++)); do
        read -r name pid st <<<"${lines[$i]}"
        if is_alive "$pid" "$st"; then
            die "$name (pid $pid) still running after SIGKILL"
        fi
    done
    : >"$PIDS"
    log "stopped"
}

cmd_status() {
    local name pid st rc=0
    if [[ ! -s "$PIDS" ]]; then
        echo "not running (nothing recorded in $PIDS)"
        return 1
    fi
    while read -r name pid st; do
        if is_alive "$pid" "$st"; then
            echo "$name: running (pid $pid)"
        else
            echo "$name: DEAD (pid $pid)"
            rc=1
        fi
    done <"$PIDS"
    SLURM_CONF="$SLURM_CONF_FILE" sinfo 2>&1 || rc=1
    cat "$DIR/env" 2>/dev/null || true
    return "$rc"
}

cmd_clean() {
    cmd_stop
    # Only our own scratch dir, and only if it looks like one of ours.
    if [[ -f "$DIR/pids" ]]; then
        rm -rf -- "$DIR"
        log "removed $DIR"
    fi
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    clean) cmd_clean ;;
    *) echo "usage: $0 start|stop|status|clean" >&2; exit 2 ;;
esac
