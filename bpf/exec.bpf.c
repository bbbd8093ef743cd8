/* Exec capture: filename and argv at syscall entry, success at sched_process_exec,
 * parent from sched_process_fork.
 *
 * Tracepoints only: kprobes on __x64_sys_execve are not traceable on recent kernels,
 * and kernel struct layouts are never dereferenced (the headers BCC compiles against
 * may be older than the running kernel; ENVIRONMENT.md, eBPF). The parent and its comm
 * come from the fork event, not from task->real_parent.
 *
 * Flow: sys_enter_execve(at) emits an args_record keyed by thread id; if the exec
 * succeeds, sched_process_exec emits an exec_record whose old_tid names that thread.
 * User space pairs them; an args_record without an exec_record was a failed exec.
 */
#include <uapi/linux/ptrace.h>
#include "common.bpf.h"

#ifndef FORK_TABLE_SIZE
#define FORK_TABLE_SIZE 65536
#endif

BPF_PERCPU_ARRAY(args_scratch, struct args_record, 1);
BPF_PERCPU_ARRAY(exec_scratch, struct exec_record, 1);
BPF_TABLE("lru_hash", u32, struct fork_info, forks, FORK_TABLE_SIZE);

static __always_inline int record_args(void *ctx, const char *filename, const char *const *argv)
{
    u32 zero = 0;
    struct args_record *r = args_scratch.lookup(&zero);
    if (!r)
        return 0;
    r->kind = RECORD_ARGS;
    r->tid = (u32)bpf_get_current_pid_tgid();
    r->ts_ns = bpf_ktime_get_ns();
    r->flags = 0;
    r->argc = 0;
    int len = bpf_probe_read_user_str(r->filename, sizeof(r->filename), filename);
    if (len < 0)
        r->filename[0] = 0;
    else if (len == sizeof(r->filename))
        r->flags |= FLAG_FILENAME_TRUNCATED;

    u64 off = 0; /* u64: a u32 is bounds-checked on a zero-extended copy the verifier cannot link back */
    int i;
    for (i = 0; i < ARGV_MAX_ARGS; i++) {
        const char *arg = NULL;
        if (bpf_probe_read_user(&arg, sizeof(arg), &argv[i])) {
            r->flags |= FLAG_ARGV_UNREADABLE;
            goto done;
        }
        if (!arg)
            goto done;
        if (off >= ARGV_MAX_BYTES) {
            r->flags |= FLAG_ARGV_TRUNCATED;
            goto done;
        }
        /* For the verifier: idx < ARGV_MAX_BYTES and room <= ARGV_MAX_BYTES, so
         * idx + room stays inside args[2 * ARGV_MAX_BYTES]. The empty asm stops clang
         * from dropping the mask it can prove redundant (the verifier cannot). */
        u64 idx = off;
        asm volatile("" : "+r"(idx));
        idx &= ARGV_MAX_BYTES - 1;
        u64 room = ARGV_MAX_BYTES - idx;
        len = bpf_probe_read_user_str(&r->args[idx], room, arg);
        if (len <= 0) {
            r->flags |= FLAG_ARGV_UNREADABLE;
            goto done;
        }
        r->argc++;
        off += len;
        if ((u64)len == room) {
            r->flags |= FLAG_ARGV_TRUNCATED;
            goto done;
        }
    }
    {
        const char *more = NULL;
        if (!bpf_probe_read_user(&more, sizeof(more), &argv[ARGV_MAX_ARGS]) && more)
            r->flags |= FLAG_ARGV_TRUNCATED;
    }
done:
    asm volatile("" : "+r"(off)); /* keep the bound below for the verifier */
    if (off > ARGV_MAX_BYTES)
        off = ARGV_MAX_BYTES;
    r->args_size = off;
    u64 size = (sizeof(*r) - sizeof(r->args)) + off;
#ifdef USE_RINGBUF
    if (events.ringbuf_output(r, size, OUTPUT_FLAGS))
#else
    if (events.perf_submit(ctx, r, size))
#endif
    {
        u32 slot = DROP_ARGS;
        u64 *count = drops.lookup(&slot);
        if (count)
            __sync_fetch_and_add(count, 1);
    }
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_execve)
{
    return record_args(args, args->filename, args->argv);
}

TRACEPOINT_PROBE(syscalls, sys_enter_execveat)
{
    return record_args(args, args->filename, args->argv);
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    u32 zero = 0;
    struct exec_record *r = exec_scratch.lookup(&zero);
    if (!r)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    u64 ugid = bpf_get_current_uid_gid();
    r->kind = RECORD_EXEC;
    r->pid = id >> 32;
    r->old_tid = args->old_pid;
    r->ts_ns = bpf_ktime_get_ns();
    r->cgroup_id = bpf_get_current_cgroup_id();
    r->uid = (u32)ugid;
    r->gid = ugid >> 32;
    r->flags = 0;
    r->pad = 0;
    bpf_get_current_comm(r->comm, sizeof(r->comm));
    TP_DATA_LOC_READ_STR(r->filename, filename, sizeof(r->filename));
    u32 pid = r->pid;
    struct fork_info *f = forks.lookup(&pid);
    if (f) {
        r->ppid = f->ppid;
        r->fork_boot_ns = f->boot_ns;
        __builtin_memcpy(r->parent_comm, f->comm, sizeof(r->parent_comm));
    } else {
        r->ppid = 0;
        r->fork_boot_ns = 0;
        r->parent_comm[0] = 0;
        r->flags |= FLAG_NO_FORK_INFO;
    }
#ifdef USE_RINGBUF
    if (events.ringbuf_output(r, sizeof(*r), OUTPUT_FLAGS))
#else
    if (events.perf_submit(args, r, sizeof(*r)))
#endif
    {
        u32 slot = DROP_EXEC;
        u64 *count = drops.lookup(&slot);
        if (count)
            __sync_fetch_and_add(count, 1);
    }
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_fork)
{
    /* current is the parent; threads are recorded too (harmless: the LRU evicts them). */
    u32 child = args->child_pid;
    struct fork_info f = {};
    f.ppid = bpf_get_current_pid_tgid() >> 32;
    f.boot_ns = bpf_ktime_get_boot_ns();
    bpf_get_current_comm(f.comm, sizeof(f.comm));
    forks.update(&child, &f);
    return 0;
}
