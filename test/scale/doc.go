// Package scale holds two opt-in load drivers for the power webhook (issue
// 13: a 100,000-pod cluster in fixed memory, at a fraction of today's CPU per
// admission). Both run the sandbox of test/framework/sandbox (a real kube-apiserver and
// etcd, cert-manager, both webhook configurations of deploy/webhook/ and the
// real power-webhook binary as its own process) and measure that process
// from outside: its live heap after a forced GC (--pprof-bind-address), its
// /metrics and /proc/<pid>.
//
//   - TestScaleCluster (SCALE_BENCH=1, `make bench-scale`) builds, through the
//     API, 5,000 GPU nodes, 30,000 GPU pods admitted by the webhook and
//     70,000 pods it never sees, and reports the webhook's memory per pod, its
//     restart (informer sync) time and peak RSS, and admission latency at
//     that size.
//   - TestAdmissionCPU (ADMISSION_BENCH=1, `make bench-admission`) creates
//     2,000 GPU pods at a time, alternately into a namespace the webhooks
//     intercept and into one they skip, and reports creates/s, p50/p99 and
//     the CPU the webhook and the API server spend per pod. With
//     ADMISSION_FLOOR=1 it also runs floorwebhook (a do-nothing webhook,
//     its own process, built at the start) through both kinds of
//     configuration: the floor under any webhook's CPU on the machine.
//
// Both run the binaries in bin/ (`make build`), or those in BENCH_BIN_DIR:
// two builds can be compared in turn on the same machine. TMPDIR decides
// where etcd keeps its data; the make targets put it on tmpfs (/dev/shm).
// Neither is part of `make test`: they are measurements, not checks, and
// take minutes.
package scale
