#!/usr/bin/env bash
# A converter worker of the demo pipeline written in the shell. Every queue
# operation goes through the quantd command; `python -m quantd.demo.convert`
# does the work. Claims are held for this shell's pid ($$), so the daemon
# recovers them when the shell dies, even though each quantd command exits
# right away.
#
# Usage: converter.sh --worker ID --root DIR --scratch DIR [--work-s SECONDS]
# Environment: QUANTD_PYTHON, the Python with quantd installed (default
# python3). SIGTERM or SIGINT: finish the current item, then exit 0.
set -u

worker=""
root=""
scratch=""
work_s=0
while [ $# -gt 0 ]; do
    case $1 in
        --worker) worker=$2; shift 2 ;;
        --root) root=$2; shift 2 ;;
        --scratch) scratch=$2; shift 2 ;;
        --work-s) work_s=$2; shift 2 ;;
        *) echo "converter.sh: unknown option '$1'" >&2; exit 2 ;;
    esac
done
if [ -z "$worker" ] || [ -z "$root" ] || [ -z "$scratch" ]; then
    echo "converter.sh: --worker, --root and --scratch are required" >&2
    exit 2
fi
python=${QUANTD_PYTHON:-python3}
mkdir -p "$scratch" || exit 1

# Exit codes of the quantd command.
nothing_to_claim=75
claim_lost=4
# Exit code of `python -m quantd.demo.convert spec` for an invalid hypothesis.
invalid_input=3

stopping=0
trap 'stopping=1' TERM INT

log() {
    # One line per event: the event name, then key=value fields.
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $1 worker=$worker pid=$$ ${*:2}" >&2
}

queue_op() {
    "$python" -m quantd "$@" --root "$root" --worker "$worker" \
        --stage converter --pid $$
}

finish() {
    # Run a route or fail; a lost claim is logged, not fatal.
    local id=$1
    shift
    queue_op "$@" >/dev/null 2>"$scratch/finish.err"
    local status=$?
    if [ $status -eq 0 ]; then
        return 0
    fi
    if [ $status -eq $claim_lost ]; then
        log claim_lost "item_id=$id"
    else
        log finish_failed "item_id=$id status=$status" \
            "reason=\"$(paste -sd ' ' "$scratch/finish.err")\""
    fi
    return 1
}

log worker_started "root=$root"
while [ $stopping -eq 0 ]; do
    queue_op claim to-convert --wait 1 --json \
        >"$scratch/claim.json" 2>"$scratch/claim.err"
    status=$?
    if [ $status -eq $nothing_to_claim ]; then
        continue
    fi
    if [ $status -ne 0 ]; then
        log claim_failed "status=$status" \
            "reason=\"$(paste -sd ' ' "$scratch/claim.err")\""
        sleep 1
        continue
    fi
    id=$("$python" -m quantd.demo.convert id <"$scratch/claim.json")
    log item_claimed "item_id=$id"
    "$python" -m quantd.demo.convert spec --work-s "$work_s" \
        <"$scratch/claim.json" >"$scratch/spec.json" 2>"$scratch/spec.err"
    status=$?
    if [ $status -eq 0 ]; then
        finish "$id" route "$id" to-backtest "$scratch/spec.json" &&
            log item_routed "item_id=$id to=to-backtest"
        continue
    fi
    reason=$(paste -sd ' ' "$scratch/spec.err")
    if [ $status -ne $invalid_input ]; then
        reason="converter filter exited with status $status: $reason"
    fi
    finish "$id" fail "$id" --reason "$reason" &&
        log item_failed "item_id=$id reason=\"$reason\""
done
log worker_stopped
exit 0
