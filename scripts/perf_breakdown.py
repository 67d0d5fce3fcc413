#!/usr/bin/env python3
"""Where a proxy's CPU goes, by kind of work: reads `perf report` of a `perf record -g` profile
(self time per symbol) and sums the symbols into categories, so that one request's cost can be
split into switches and wake-ups, system calls and TCP, ureq, allocation and our own code.

    perf record -g -p PID -o perf.data -- sleep 5
    scripts/perf_breakdown.py perf.data [requests]   # with requests: microseconds per request too
"""
import re
import subprocess
import sys

# First match wins; patterns are searched in "dso symbol".
CATEGORIES = [
    ("switches and wake-ups (scheduler, futex)",
     r"finish_task_switch|__schedule|schedule\b|_raw_spin_unlock_irqrestore|try_to_wake_up|futex|"
     r"pick_next|enqueue_|dequeue_|update_curr|update_load|select_task_rq|psi_|__switch_to|"
     r"switch_mm|ttwu|sched_|__wake_up|wake_q|syscall@|\bsyscall\b|native_queued_spin|"
     r"std::thread::park|std::sys::.*futex|parking|unpark|_raw_spin_lock"),
    ("TCP/IP and sockets (kernel)",
     r"tcp_|inet_|ip_|__ip|ipv4|sk_|skb|sock_|__sys_sendto|__sys_recvfrom|sendmsg|recvmsg|"
     r"__libc_recv|__libc_send|__send\b|__recv\b|net_rx|netif|__netif|loopback|__dev_queue|"
     r"dev_hard_start|process_backlog|__napi|napi_|__kfree_skb|kmem_cache|__alloc_skb|copy_to_iter|"
     r"_copy_to_iter|_copy_from_iter|copyin|copyout|rep_movs|security_socket|__check_object_size|"
     r"fdget|__fget|sockfd_lookup|release_sock|lock_sock|dst_|nf_|raw_local_deliver|__local_bh_enable|"
     r"do_softirq|__softirqentry|irq_exit|net_"),
    ("epoll and other system calls (kernel)",
     r"\[kernel|do_syscall|entry_SYSCALL|syscall_exit|syscall_return|__x64_sys|ep_|epoll|"
     r"__get_user|__put_user|clear_user|exit_to_user|irqentry|rcu_|ktime|read_tsc|__fdget|"
     r"vfs_|ksys_|fput|mutex_"),
    ("allocation (malloc/free)", r"malloc|free\b|cfree|_int_|realloc|calloc|tcache|arena|"
     r"__rust_alloc|__rust_dealloc|__rdl_|alloc::raw_vec|RawVec|do_reserve_and_handle|finish_grow"),
    ("ureq and its http types", r"ureq|http::|httparse|bytes::"),
    ("lb-sync: front end (poller, parsing, responses)", r"lb_sync::server"),
    ("lb-sync: proxying, balancing, accounting", r"lb_sync::"),
    ("memcpy/memmove and libc", r"mem(move|cpy|set|cmp)|__strlen|libc|vdso|clock_gettime"),
    ("crossbeam, std, core", r"crossbeam|std::|core::|alloc::"),
]


def main():
    path = sys.argv[1]
    requests = int(sys.argv[2]) if len(sys.argv) > 2 else None
    report = subprocess.run(
        ["perf", "report", "-i", path, "--no-children", "--sort", "dso,sym", "--stdio", "--percent-limit", "0"],
        capture_output=True, text=True, check=True).stdout
    totals = {name: 0.0 for name, _ in CATEGORIES}
    totals["other"] = 0.0
    top = {}
    for line in report.splitlines():
        m = re.match(r"\s+([0-9.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*)", line)
        if not m:
            continue
        share, dso, sym = float(m.group(1)), m.group(2), m.group(3).strip()
        text = f"{dso} {sym}"
        for name, pattern in CATEGORIES:
            if re.search(pattern, text):
                totals[name] += share
                top.setdefault(name, []).append((share, sym))
                break
        else:
            totals["other"] += share
            top.setdefault("other", []).append((share, sym))
    print("| where | share of samples | top symbols |")
    print("|---|---:|---|")
    for name, share in sorted(totals.items(), key=lambda kv: -kv[1]):
        if share < 0.05:
            continue
        syms = ", ".join(f"{s[1][:40]} {s[0]:.1f}%" for s in sorted(top.get(name, []), reverse=True)[:3])
        print(f"| {name} | {share:.1f} % | {syms} |")


if __name__ == "__main__":
    main()
