package ingress

// SetClosedWaitHook sets a function Shutdown calls as it starts waiting for
// the sessions it closed at its deadline (nil: none).
func SetClosedWaitHook(h func()) { testHookClosedWait = h }
