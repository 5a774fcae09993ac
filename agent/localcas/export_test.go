package localcas

// SetOnWait makes s call f whenever an Ensure starts waiting for a download
// that another Ensure has in flight.
func SetOnWait(s *Store, f func(digest string)) { s.onWait = f }

// Crash releases s's directory as a process that dies does: no Close.
func Crash(s *Store) error { return s.lock.Close() }
