// LD_PRELOAD helper for bench/gpu/lost_rank_backtrace.sh: on SIGABRT, prints the native stack (library and
// offset) to stderr, then dies of the signal as before. Chains after Python's faulthandler.
#include <execinfo.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
static void on_abort(int sig) {
  void* frames[64];
  int n = backtrace(frames, 64);
  static const char head[] = "--- native backtrace (SIGABRT) ---\n";
  write(2, head, sizeof head - 1);
  backtrace_symbols_fd(frames, n, 2);
  signal(sig, SIG_DFL);
  raise(sig);
}
__attribute__((constructor)) static void install(void) {
  void* warm[1];
  backtrace(warm, 1);  // loads libgcc_s now, not inside the handler
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_abort;
  sigaction(SIGABRT, &sa, 0);
}
