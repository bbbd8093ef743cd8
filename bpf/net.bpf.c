/* TCP connect and listen capture from sock:inet_sock_set_state (IPv4 and IPv6).
 *
 * The tracepoint hands over addresses and ports as plain values, so nothing of the
 * socket is dereferenced. A connect changes state CLOSE -> SYN_SENT in the caller's
 * context (the owner is remembered by socket address), and SYN_SENT -> ESTABLISHED
 * (or -> CLOSE when refused) later, often in softirq context: the record is emitted
 * then, with the full 4-tuple and the remembered owner. A listen changes CLOSE -> LISTEN
 * in the caller's context; the local port is 0 when listen() picked it (unbound socket).
 */
#include <uapi/linux/ptrace.h>
#include <uapi/linux/in.h>
#include <linux/socket.h>
#include <net/tcp_states.h>
#include "common.bpf.h"

#ifndef SOCK_TABLE_SIZE
#define SOCK_TABLE_SIZE 16384
#endif

BPF_TABLE("lru_hash", u64, struct sock_owner, connecting, SOCK_TABLE_SIZE);

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != IPPROTO_TCP)
        return 0;
    if (args->family != AF_INET && args->family != AF_INET6)
        return 0;
    int oldstate = args->oldstate;
    int newstate = args->newstate;
    u64 sk = (u64)args->skaddr;

    if (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT) {
        u64 id = bpf_get_current_pid_tgid();
        u64 ugid = bpf_get_current_uid_gid();
        struct sock_owner owner = {};
        owner.pid = id >> 32;
        owner.tid = (u32)id;
        owner.uid = (u32)ugid;
        owner.gid = ugid >> 32;
        owner.cgroup_id = bpf_get_current_cgroup_id();
        bpf_get_current_comm(owner.comm, sizeof(owner.comm));
        connecting.update(&sk, &owner);
        return 0;
    }

    struct net_record r = {};
    if (oldstate == TCP_SYN_SENT) {
        struct sock_owner *owner = connecting.lookup(&sk);
        if (!owner)
            return 0; /* connect began before the program was loaded */
        r.kind = RECORD_CONNECT;
        r.pid = owner->pid;
        r.tid = owner->tid;
        r.uid = owner->uid;
        r.gid = owner->gid;
        r.cgroup_id = owner->cgroup_id;
        __builtin_memcpy(r.comm, owner->comm, sizeof(r.comm));
        if (newstate != TCP_ESTABLISHED)
            r.flags |= FLAG_CONNECT_FAILED;
        connecting.delete(&sk);
    } else if (newstate == TCP_LISTEN) {
        u64 id = bpf_get_current_pid_tgid();
        u64 ugid = bpf_get_current_uid_gid();
        r.kind = RECORD_LISTEN;
        r.pid = id >> 32;
        r.tid = (u32)id;
        r.uid = (u32)ugid;
        r.gid = ugid >> 32;
        r.cgroup_id = bpf_get_current_cgroup_id();
        bpf_get_current_comm(r.comm, sizeof(r.comm));
    } else {
        return 0;
    }
    r.ts_ns = bpf_ktime_get_ns();
    r.family = args->family;
    r.sport = args->sport;
    r.dport = args->dport;
    if (args->family == AF_INET) {
        bpf_probe_read_kernel(r.saddr, 4, args->saddr);
        bpf_probe_read_kernel(r.daddr, 4, args->daddr);
    } else {
        bpf_probe_read_kernel(r.saddr, 16, args->saddr_v6);
        bpf_probe_read_kernel(r.daddr, 16, args->daddr_v6);
    }
#ifdef USE_RINGBUF
    if (events.ringbuf_output(&r, sizeof(r), OUTPUT_FLAGS))
#else
    if (events.perf_submit(args, &r, sizeof(r)))
#endif
    {
        u32 slot = DROP_NET;
        u64 *count = drops.lookup(&slot);
        if (count)
            __sync_fetch_and_add(count, 1);
    }
    return 0;
}
