// Package replication holds cdc's sources of changes: the pgoutput logical
// replication consumer (Stream), with its consistent first copy taken from
// the slot's exported snapshot, and its preflight checks.
//
// Positions flow one way: a Stream hands batches to the sink, and confirms
// to the slot only the position the sink reports as committed in the chat
// database (or, when nothing is in flight, the server's WAL end from a
// keepalive, so that an idle table does not pin WAL).
package replication
