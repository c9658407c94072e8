// Package nvmlfake is an nvmlctl.Library without hardware, for tests and
// demos (the agent's --fake-nvml). It is cgo-free; the real backend does not
// import it.
//
//   - Fake (New, NewFromFile) answers like NVML, down to the return codes
//     (*nvmlctl.Error), with fault injection (FailNext, FailAlways, by Op),
//     a record of the calls it received (Calls, Call), and the world's
//     changes outside the agent: processes, drift "by someone else", a lost
//     GPU, time held back by the cap (Update and the helpers beside it).
//   - State and GPU are what a Fake knows, and the JSON of the state file a
//     Fake can keep (PersistTo, NewFromFile), which another process reads
//     and changes; testdata/ holds examples.
//   - H100s, UUID and MIGUUID build GPUs whose names are the same every run.
package nvmlfake
