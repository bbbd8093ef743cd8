/* Records the eBPF capture programs send to user space (agent/ebpf.py parses them).
 *
 * Every record starts with `u32 kind`. Layouts are fixed-width with explicit padding;
 * agent/ebpf.py mirrors them with struct formats, and tests/agent/test_ebpf.py checks
 * the sizes against the compiled programs.
 *
 * Bounds (overridable with -D at load time):
 *   ARGV_MAX_ARGS  arguments copied per execve (default 32)
 *   ARGV_MAX_BYTES bytes of argv copied, NULs included (default 4096; a power of two)
 * Beyond either bound the record carries FLAG_ARGV_TRUNCATED; an exact fit of the byte
 * bound is also flagged (the kernel helper cannot tell the two apart).
 */
#ifndef RULELESS_EVENTS_H
#define RULELESS_EVENTS_H

#ifndef ARGV_MAX_ARGS
#define ARGV_MAX_ARGS 32
#endif
#ifndef ARGV_MAX_BYTES
#define ARGV_MAX_BYTES 4096
#endif
#define PATH_BYTES 256
#define COMM_BYTES 16

enum record_kind {
    RECORD_ARGS = 1,    /* sys_enter_execve/execveat: filename and argv, by thread */
    RECORD_EXEC = 2,    /* sched_process_exec: the exec succeeded */
    RECORD_CONNECT = 3, /* TCP SYN_SENT -> ESTABLISHED (or -> CLOSE: failed) */
    RECORD_LISTEN = 4,  /* TCP CLOSE -> LISTEN */
};

/* Record flags. */
#define FLAG_ARGV_TRUNCATED (1u << 0)
#define FLAG_ARGV_UNREADABLE (1u << 1)     /* an argv pointer or string could not be read */
#define FLAG_FILENAME_TRUNCATED (1u << 2)
#define FLAG_CONNECT_FAILED (1u << 3)
#define FLAG_NO_FORK_INFO (1u << 4)        /* forked before the program was loaded */

/* Drop counter slots (per-CPU array "drops"): records the output buffer refused. */
#define DROP_ARGS 0
#define DROP_EXEC 1
#define DROP_NET 2
#define DROP_SLOTS 4

struct args_record {            /* 24 bytes + PATH_BYTES + args used */
    u32 kind;
    u32 tid;                    /* the exec'ing thread (sched_process_exec's old_pid) */
    u64 ts_ns;                  /* CLOCK_MONOTONIC */
    u32 flags;
    u16 argc;                   /* arguments copied */
    u16 args_size;              /* bytes of args used (NUL-separated) */
    char filename[PATH_BYTES];
    char args[2 * ARGV_MAX_BYTES]; /* only ARGV_MAX_BYTES used; twice for the verifier */
};

struct exec_record {            /* 88 bytes + PATH_BYTES */
    u32 kind;
    u32 pid;                    /* tgid after exec */
    u32 old_tid;                /* the thread that called execve */
    u32 ppid;                   /* the forking parent (0: unknown, see FLAG_NO_FORK_INFO) */
    u64 ts_ns;                  /* CLOCK_MONOTONIC */
    u64 fork_boot_ns;           /* CLOCK_BOOTTIME at fork (0: unknown) */
    u64 cgroup_id;              /* cgroup v2 id */
    u32 uid;
    u32 gid;
    u32 flags;
    u32 pad;
    char comm[COMM_BYTES];
    char parent_comm[COMM_BYTES];
    char filename[PATH_BYTES];
};

struct net_record {             /* 96 bytes */
    u32 kind;
    u32 pid;
    u32 tid;
    u32 uid;
    u32 gid;
    u32 flags;
    u64 ts_ns;                  /* CLOCK_MONOTONIC */
    u64 cgroup_id;
    u16 family;                 /* AF_INET / AF_INET6 */
    u16 sport;                  /* host byte order */
    u16 dport;
    u16 pad;
    u8 saddr[16];               /* network byte order; IPv4 in the first 4 bytes */
    u8 daddr[16];
    char comm[COMM_BYTES];
};

struct fork_info {
    u32 ppid;
    u32 pad;
    u64 boot_ns;
    char comm[COMM_BYTES];
};

struct sock_owner {
    u32 pid;
    u32 tid;
    u32 uid;
    u32 gid;
    u64 cgroup_id;
    char comm[COMM_BYTES];
};

#endif
