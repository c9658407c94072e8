// Package testlog records what code under test logs through logr, V(1)
// included, one map per line (Lines, New), so a test can find a line
// (Find, All) or wait for one (WaitFor, through test/framework/poll).
package testlog
