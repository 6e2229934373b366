// Helpers for tests that fork real processes: an append-only log the
// children write, a gate that releases them together, and reaping.
#pragma once

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace dogpile::test {

// Appends one line to the log; O_APPEND makes each short write atomic, so
// lines from concurrent processes never interleave.
inline void log_line(const std::string& path, const std::string& line) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) _exit(90);
  const std::string text = line + "\n";
  if (::write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size())) _exit(91);
  ::close(fd);
}

inline std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

inline int count_prefix(const std::vector<std::string>& lines, const std::string& prefix) {
  int n = 0;
  for (const auto& l : lines) n += l.rfind(prefix, 0) == 0;
  return n;
}

// Children are released together: each blocks reading a pipe until the parent
// closes its write end.
class StartGate {
 public:
  StartGate() {
    if (::pipe2(fds_, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
  }
  ~StartGate() {
    for (int fd : fds_)
      if (fd >= 0) ::close(fd);
  }
  void wait_in_child() {
    ::close(fds_[1]);
    char c;
    while (::read(fds_[0], &c, 1) < 0 && errno == EINTR) {
    }
  }
  void open_gate() {
    ::close(fds_[1]);
    fds_[1] = -1;
  }

 private:
  int fds_[2];
};

// Forks `n` children running `body(i)`; the child's exit status is its return
// value (an exception is status 99).
inline std::vector<pid_t> spawn(int n, StartGate& gate, const std::function<int(int)>& body) {
  std::vector<pid_t> pids;
  for (int i = 0; i < n; ++i) {
    const pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error("fork failed");
    if (pid == 0) {
      int rc = 99;
      try {
        gate.wait_in_child();
        rc = body(i);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "child %d: %s\n", i, e.what());
      }
      _exit(rc);
    }
    pids.push_back(pid);
  }
  return pids;
}

// waitpid(pid), retried on EINTR: the child's wait status (-1 on error).
inline int wait_status(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  return status;
}

// Reads `fd` to its end (a pipe: until every writer closed it), then closes it.
inline std::string read_to_end(int fd) {
  std::string text;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return text;
}

// Waits for every pid; returns the number that did not exit with status 0.
inline int reap(const std::vector<pid_t>& pids, std::map<pid_t, int>* statuses = nullptr) {
  int failed = 0;
  for (pid_t pid : pids) {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (statuses != nullptr) (*statuses)[pid] = status;
    failed += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  return failed;
}

// Polls `path` until a line starting with `prefix` appears; false after `limit`.
inline bool wait_for_line(const std::string& path, const std::string& prefix,
                          std::chrono::steady_clock::duration limit = std::chrono::seconds(20)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (count_prefix(read_lines(path), prefix) == 0) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

}  // namespace dogpile::test
