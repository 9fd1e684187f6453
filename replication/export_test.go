package replication

// SetMinPartPages sets the smallest part of a parallel first copy for a
// test, so a small table is copied in parts; it returns the restore.
func SetMinPartPages(n int64) (restore func()) {
	old := minPartPages
	minPartPages = n
	return func() { minPartPages = old }
}
