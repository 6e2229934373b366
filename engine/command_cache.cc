#include "dogpile/command_cache.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <utility>

#include <xxhash.h>

#include "dogpile/cache_dir.h"
#include "dogpile/error.h"
#include "dogpile/region.h"
#include "time_math.h"
#include "unique_fd.h"

extern char** environ;

namespace dogpile {
namespace {

using internal::UniqueFd;

constexpr std::string_view kKeyVersion = "dogpile-exec-key/1";

// The exec region's largest value: the most output, and room for the
// command line and working directory that a result records (the kernel
// bounds argv and the environment together to a few MiB).
constexpr std::size_t kMaxStoredResult = kMaxExecOutput + (std::size_t{16} << 20);

void put_u64(std::string& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void put_field(std::string& out, char tag, std::string_view bytes) {
  out.push_back(tag);
  put_u64(out, bytes.size());
  out.append(bytes);
}

std::vector<std::string> sorted_unique(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  return v;
}

Status current_dir(std::string& out) {
  std::string buf(PATH_MAX, '\0');
  for (;;) {
    if (::getcwd(buf.data(), buf.size()) != nullptr) {
      out.assign(buf.c_str());
      return Status::ok();
    }
    if (errno != ERANGE) return Status::io_error("cannot read the working directory", ".", errno);
    buf.resize(buf.size() * 2);
  }
}

// A creator that could not start its command: carried out of get_or_create
// (which then stores nothing and releases the lock) and turned back into a Status.
struct LaunchFailed {
  Status status;
};

// Runs the command for a creator: a command that cannot start is the
// caller's to report; failing to capture its output is an error. Records
// what ran where, and in `overflow` whether the output was too large to keep.
CommandResult run_for_creator(const CommandSpec& spec, const ExecOptions& options,
                              Overflow& overflow) {
  CommandResult result;
  RunReport report;
  const RunOptions run{.input = spec.input ? &*spec.input : nullptr,
                       .max_output = options.max_output,
                       .stream_overflow = options.stream_overflow};
  if (Status s = run_command(spec.argv, run, result, report); !s) {
    if (s.code() == StatusCode::kInvalidArgument) throw LaunchFailed{s};
    throw Error(s);
  }
  overflow = report.overflowed ? Overflow::kOutput : Overflow::kNone;
  result.argv = spec.argv;
  // Only for people reading the cache: a directory that cannot be read
  // (removed while we run) is left empty rather than failing the run.
  (void)current_dir(result.cwd);
  return result;
}

// Puts stdio on /dev/null and closes the descriptors inherited from whoever
// started this process: a pipe that the caller's caller reads to EOF must not
// stay open in a background refresh.
void detach_stdio() noexcept {
  const int null_fd = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null_fd >= 0) {
    for (int fd = 0; fd <= 2; ++fd) ::dup2(null_fd, fd);
    if (null_fd > 2) ::close(null_fd);
  }
  // Descriptors without FD_CLOEXEC came from whoever started us; close them.
  // (The one exception of ours, LMDB's data-file descriptor, belongs to the
  // parent's environment, which a fork()ed child never uses: the engine opens
  // its own.) Collect first: closing while reading the directory would
  // change it under the reader.
  std::vector<int> inherited;
  if (DIR* dir = ::opendir("/proc/self/fd")) {
    const int own = ::dirfd(dir);
    while (const dirent* e = ::readdir(dir)) {
      char* end = nullptr;
      const long fd = std::strtol(e->d_name, &end, 10);
      if (end == e->d_name || *end != '\0' || fd <= 2 || fd == own) continue;
      const int flags = ::fcntl(static_cast<int>(fd), F_GETFD);
      if (flags >= 0 && (flags & FD_CLOEXEC) == 0) inherited.push_back(static_cast<int>(fd));
    }
    ::closedir(dir);
  }
  for (int fd : inherited) ::close(fd);
}

// Runs `work` in a detached process (double fork + setsid) and returns once
// the intermediate child is reaped, without waiting for `work`. The
// grandchild exits with `work`'s status and never returns here.
template <class Work>
Status run_detached(Work&& work) {
  // Buffered output would otherwise be written twice, by us and the child.
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
  const pid_t child = ::fork();
  if (child < 0) return Status::io_error("cannot fork a background refresh", "", errno);
  if (child == 0) {
    ::setsid();
    const pid_t grandchild = ::fork();
    if (grandchild != 0) ::_exit(grandchild < 0 ? 1 : 0);
    detach_stdio();
    int rc = 1;
    try {
      rc = work();
    } catch (...) {
      rc = 1;
    }
    ::_exit(rc);
  }
  int status = 0;
  while (::waitpid(child, &status, 0) < 0) {
    if (errno != EINTR) return Status::io_error("cannot reap a background refresh", "", errno);
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return Status::error(StatusCode::kIOError, "cannot start a background refresh");
  }
  return Status::ok();
}

// The region's options for a command-result region: `wait_for_fresh` for the
// foreground (a regeneration is waited for, never served stale by the
// region itself) or not (a background refresh gives up when another one runs).
RegionOptions region_options(const std::shared_ptr<Clock>& clock, bool wait_for_fresh) {
  RegionOptions o;
  o.name = CommandCache::kRegion;
  o.wait_for_fresh = wait_for_fresh;
  o.clock = clock;
  o.max_value_size = kMaxStoredResult;
  return o;
}

ConfigMap backend_arguments(const std::string& dir) { return ConfigMap{{"path", dir}}; }

// What every read of a result compares its age with: `lifetime` when there is
// one, else forever. Explicit, so it also wins over a stored expires_at that
// an earlier call with another ttl wrote.
Duration lifetime_or_forever(const std::optional<Duration>& lifetime) {
  return lifetime ? *lifetime : Duration::max();
}

// now - then, clamped: `then` comes from stored bytes.
Duration age(WallTime now, WallTime then) {
  return Duration(internal::saturating_sub(internal::wall_ns(now), internal::wall_ns(then)));
}

ConfigError bad_option(const std::string& message) {
  return ConfigError(Status::error(StatusCode::kInvalidArgument, "exec: " + message));
}

void check_env_name(const std::string& name) {
  if (name.empty() || name.find('=') != std::string::npos) {
    throw bad_option("not an environment variable name: '" + name + "'");
  }
}

void check_options(const CommandSpec& spec, const ExecOptions& options) {
  if (spec.argv.empty()) throw bad_option("no command given");
  for (const std::string& name : spec.env) check_env_name(name);
  if (options.ttl && options.ttl->count() <= 0) throw bad_option("ttl must be positive");
  if (options.stale) {
    if (!options.ttl) throw bad_option("stale needs a ttl");
    if (options.stale->count() <= 0 || *options.stale >= *options.ttl) {
      throw bad_option("stale must be positive and shorter than ttl (a result older than "
                       "stale is refreshed in the background, one older than ttl in the "
                       "foreground)");
    }
  }
  if (options.max_output > kMaxExecOutput || options.max_input > kMaxExecOutput) {
    throw bad_option("max_output and max_input must be at most " +
                     std::to_string(kMaxExecOutput) + " bytes");
  }
}

// What a creator stores: nothing too large, no signal death unless asked,
// no failure with discard_failures. `overflow` is the creator's report.
CreateOptions<CommandResult> create_options(const ExecOptions& options, Duration read_expiration,
                                            const Overflow* overflow) {
  CreateOptions<CommandResult> c;
  c.expiration_time = read_expiration;
  c.ttl = options.ttl;
  c.should_cache = [overflow, discard = options.discard_failures,
                    signals = options.cache_signals](const CommandResult& r) {
    if (*overflow != Overflow::kNone) return false;
    if (r.signal != 0 && !signals) return false;
    return !discard || r.succeeded();
  };
  return c;
}

// Whether this process's stdin carries data for a command: anything but a
// terminal, /dev/null or a closed descriptor.
bool stdin_carries_data() {
  struct stat st {};
  if (::fstat(STDIN_FILENO, &st) != 0) return false;
  if (::isatty(STDIN_FILENO)) return false;
  if (S_ISCHR(st.st_mode)) {
    struct stat null_st {};
    if (::stat("/dev/null", &null_st) == 0 && null_st.st_rdev == st.st_rdev) return false;
  }
  return true;
}

// Reads stdin to its end, or to one byte past `limit`. True when it ended
// within the limit.
bool read_stdin(std::size_t limit, std::string& out) {
  out.clear();
  std::string chunk(64 * 1024, '\0');
  for (;;) {
    const std::size_t want = std::min(chunk.size(), limit + 1 - out.size());
    const ssize_t n = ::read(STDIN_FILENO, chunk.data(), want);
    if (n > 0) {
      out.append(chunk.data(), static_cast<std::size_t>(n));
      if (out.size() > limit) return false;
    } else if (n == 0) {
      return true;
    } else if (errno == EAGAIN) {
      pollfd p{STDIN_FILENO, POLLIN, 0};
      ::poll(&p, 1, -1);
    } else if (errno != EINTR) {
      throw Error(Status::io_error("cannot read stdin for the command's key", "", errno));
    }
  }
}

// Under StdinPolicy::kAuto, reads a stdin that carries data into
// spec.input. False when it is larger than max_input: `prefix` then holds
// what was read, and the run cannot be stored.
bool take_input(CommandSpec& spec, const ExecOptions& options, std::string& prefix) {
  if (spec.input || spec.stdin_policy != StdinPolicy::kAuto || !stdin_carries_data()) return true;
  std::string bytes;
  if (!read_stdin(options.max_input, bytes)) {
    prefix = std::move(bytes);
    return false;
  }
  spec.input = std::move(bytes);
  return true;
}

// In a detached process: runs `spec` and stores the result unless a result
// younger than `fresh_for` is stored or another caller holds the key's
// creation lock (that caller is making a new result already).
int refresh_in_background(const std::string& dir, const std::shared_ptr<Clock>& clock,
                          const CommandSpec& spec, const std::string& key,
                          const ExecOptions& options, Duration fresh_for) {
  Region region(region_options(clock, /*wait_for_fresh=*/false), "lmdb", backend_arguments(dir));
  Overflow overflow = Overflow::kNone;
  region.get_or_create<CommandResult>(
      key,
      [&] { return run_for_creator(spec, options, overflow); },
      create_options(options, fresh_for, &overflow));
  return 0;
}

}  // namespace

std::string command_key_material(const CommandSpec& spec) {
  std::string out(kKeyVersion);
  for (const std::string& arg : spec.argv) put_field(out, 'a', arg);
  if (spec.cwd) {
    std::string cwd;
    throw_if_error(current_dir(cwd));
    put_field(out, 'c', cwd);
  }
  for (const std::string& name : sorted_unique(spec.env)) {
    check_env_name(name);
    put_field(out, 'e', name);
    const char* value = std::getenv(name.c_str());
    if (value != nullptr) {
      put_field(out, 'v', value);
    } else {
      put_field(out, 'u', {});
    }
  }
  for (const std::string& path : sorted_unique(spec.modtime)) {
    put_field(out, 'm', path);
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0) {
      std::string stamp;
      const std::int64_t mtime_ns =
          static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
      put_u64(stamp, static_cast<std::uint64_t>(mtime_ns));
      put_u64(stamp, static_cast<std::uint64_t>(st.st_size));
      put_field(out, 'f', stamp);
    } else {
      put_field(out, 'x', {});
    }
  }
  if (!spec.scope.empty()) put_field(out, 's', spec.scope);
  // Empty input reads as /dev/null does: `true | cmd` and `cmd </dev/null` share a key.
  if (spec.input && !spec.input->empty()) {
    XXH128_canonical_t digest;
    XXH128_canonicalFromHash(&digest, XXH3_128bits(spec.input->data(), spec.input->size()));
    put_field(out, 'i',
              std::string_view(reinterpret_cast<const char*>(digest.digest), sizeof digest.digest));
  }
  return out;
}

std::string command_key(const CommandSpec& spec) {
  const std::string material = command_key_material(spec);
  const XXH128_hash_t hash = XXH3_128bits(material.data(), material.size());
  XXH128_canonical_t canonical;
  XXH128_canonicalFromHash(&canonical, hash);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string key = spec.scope.empty() ? std::string() : spec.scope + "/";
  for (unsigned char byte : canonical.digest) {
    key.push_back(kHex[byte >> 4]);
    key.push_back(kHex[byte & 0xf]);
  }
  return key;
}

namespace {

// Holds SIGPIPE off the calling thread while it lives: a write to a pipe
// whose reader left (a command that stopped reading its stdin, a `head`
// after our streamed output) fails with EPIPE instead of killing the
// process. A SIGPIPE raised meanwhile is taken back, unless one was already
// pending before.
class SigpipeHold {
 public:
  SigpipeHold() noexcept {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    sigset_t pending;
    sigemptyset(&pending);
    ::sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    ::pthread_sigmask(SIG_BLOCK, &pipe_, &saved_);
  }
  ~SigpipeHold() noexcept {
    if (!was_pending_) {
      const timespec zero{};
      while (::sigtimedwait(&pipe_, nullptr, &zero) == SIGPIPE) {
      }
    }
    ::pthread_sigmask(SIG_SETMASK, &saved_, nullptr);
  }
  SigpipeHold(const SigpipeHold&) = delete;
  SigpipeHold& operator=(const SigpipeHold&) = delete;

 private:
  sigset_t pipe_{};
  sigset_t saved_{};
  bool was_pending_ = false;
};

// Writes all of `bytes` to `fd`, through short writes, EINTR and a
// non-blocking descriptor. False when the descriptor fails (EPIPE included).
bool write_all(int fd, std::string_view bytes) noexcept {
  while (!bytes.empty()) {
    const ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n >= 0) {
      bytes.remove_prefix(static_cast<std::size_t>(n));
    } else if (errno == EAGAIN) {
      pollfd p{fd, POLLOUT, 0};
      ::poll(&p, 1, -1);
    } else if (errno != EINTR) {
      return false;
    }
  }
  return true;
}

// Feeds a command's stdin pipe from `input`, then (when it continues) from
// this process's stdin, without ever blocking the capture loop.
class InputFeeder {
 public:
  InputFeeder(UniqueFd pipe, std::string_view input, bool continues)
      : pipe_(std::move(pipe)), pending_(input), source_open_(continues) {
    finish_if_done();
  }

  bool active() const noexcept { return pipe_.valid(); }
  // Which descriptor to poll next, and for what: the pipe for room while
  // bytes are pending, else this process's stdin for more.
  pollfd want() const noexcept {
    if (!pending_.empty()) return {pipe_.get(), POLLOUT, 0};
    return {STDIN_FILENO, POLLIN, 0};
  }
  void on_ready() {
    if (!pending_.empty()) {
      const ssize_t n = ::write(pipe_.get(), pending_.data(), pending_.size());
      if (n > 0) {
        pending_.remove_prefix(static_cast<std::size_t>(n));
      } else if (n < 0 && errno != EINTR && errno != EAGAIN) {
        // EPIPE: the command stopped reading, which is its business.
        stop();
        return;
      }
    } else {
      const ssize_t n = ::read(STDIN_FILENO, buffer_.data(), buffer_.size());
      if (n > 0) {
        pending_ = std::string_view(buffer_.data(), static_cast<std::size_t>(n));
      } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
        source_open_ = false;
      }
    }
    finish_if_done();
  }
  void stop() noexcept {
    pipe_ = UniqueFd();
    pending_ = {};
    source_open_ = false;
  }

 private:
  // Closing the pipe is the command's end of input.
  void finish_if_done() noexcept {
    if (pending_.empty() && !source_open_) pipe_ = UniqueFd();
  }

  UniqueFd pipe_;
  std::string_view pending_;
  bool source_open_;
  std::string buffer_ = std::string(64 * 1024, '\0');
};

// Where a command's stdout and stderr go: into the result while they fit
// max_output, then through to this process's stdout and stderr (or nowhere).
class OutputSink {
 public:
  OutputSink(const RunOptions& options, CommandResult& result, RunReport& report)
      : options_(options), result_(result), report_(report) {}

  // Takes bytes read from the command's stream `i` (0 stdout, 1 stderr).
  // False when they could not be passed on: the reader of our stream left.
  bool take(int i, std::string_view bytes) {
    if (!report_.overflowed) {
      // Never above max_output, so the subtraction cannot wrap.
      const std::size_t kept = result_.out.size() + result_.err.size();
      if (bytes.size() <= options_.max_output - kept) {
        (i == 0 ? result_.out : result_.err).append(bytes);
        return true;
      }
      report_.overflowed = true;
      if (options_.stream_overflow) {
        // What was kept goes first, each to its own stream; whichever
        // fails, the other is still written.
        const bool out_ok = write_all(STDOUT_FILENO, result_.out);
        const bool err_ok = write_all(STDERR_FILENO, result_.err);
        broken_[0] = !out_ok;
        broken_[1] = !err_ok;
      }
      std::string().swap(result_.out);
      std::string().swap(result_.err);
    }
    if (!options_.stream_overflow) return true;
    if (!broken_[i] && !write_all(i == 0 ? STDOUT_FILENO : STDERR_FILENO, bytes)) {
      broken_[i] = true;
    }
    return !broken_[i];
  }

 private:
  const RunOptions& options_;
  CommandResult& result_;
  RunReport& report_;
  bool broken_[2] = {false, false};
};

}  // namespace

Status run_command(const std::vector<std::string>& argv, CommandResult& out) {
  RunReport report;
  return run_command(argv, RunOptions{}, out, report);
}

Status run_command(const std::vector<std::string>& argv, const RunOptions& options,
                   CommandResult& out, RunReport& report) {
  out = CommandResult{};
  report = RunReport{};
  if (argv.empty()) return Status::error(StatusCode::kInvalidArgument, "no command given");

  int out_fds[2];
  int err_fds[2];
  int in_fds[2] = {-1, -1};
  if (::pipe2(out_fds, O_CLOEXEC) != 0) return Status::io_error("cannot create a pipe", "", errno);
  UniqueFd out_r(out_fds[0]);
  UniqueFd out_w(out_fds[1]);
  if (::pipe2(err_fds, O_CLOEXEC) != 0) return Status::io_error("cannot create a pipe", "", errno);
  UniqueFd err_r(err_fds[0]);
  UniqueFd err_w(err_fds[1]);
  if (options.input != nullptr && ::pipe2(in_fds, O_CLOEXEC) != 0) {
    return Status::io_error("cannot create a pipe", "", errno);
  }
  UniqueFd in_r(in_fds[0]);
  UniqueFd in_w(in_fds[1]);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  // dup2 leaves the copies on 0, 1 and 2 without close-on-exec; the originals close at exec.
  if (in_r.valid()) posix_spawn_file_actions_adddup2(&actions, in_r.get(), STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&actions, out_w.get(), STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, err_w.get(), STDERR_FILENO);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  // The command starts with no signal blocked, whatever this thread blocks.
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);

  std::vector<char*> c_argv;
  c_argv.reserve(argv.size() + 1);
  for (const std::string& arg : argv) c_argv.push_back(const_cast<char*>(arg.c_str()));
  c_argv.push_back(nullptr);
  pid_t pid = -1;
  const int rc = ::posix_spawnp(&pid, argv[0].c_str(), &actions, &attr, c_argv.data(), environ);
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&actions);
  // Only the child may keep write ends open, or reading would never see EOF.
  { UniqueFd close_out(out_w.release()); }
  { UniqueFd close_err(err_w.release()); }
  { UniqueFd close_in(in_r.release()); }
  if (rc != 0) {
    return Status::error(StatusCode::kInvalidArgument, "cannot run the command", argv[0], rc);
  }

  const SigpipeHold hold_sigpipe;
  if (in_w.valid()) ::fcntl(in_w.get(), F_SETFL, ::fcntl(in_w.get(), F_GETFL) | O_NONBLOCK);
  InputFeeder feeder(std::move(in_w), options.input != nullptr ? *options.input : std::string_view(),
                     options.input_continues);
  OutputSink sink(options, out, report);

  // Both pipes at once: a command filling stderr while we block on stdout
  // would otherwise stall forever; stdin is fed in the same loop.
  Status read_status;
  std::string chunk(64 * 1024, '\0');
  UniqueFd* streams[2] = {&out_r, &err_r};
  while (streams[0]->valid() || streams[1]->valid() || feeder.active()) {
    pollfd fds[3] = {{streams[0]->valid() ? streams[0]->get() : -1, POLLIN, 0},
                     {streams[1]->valid() ? streams[1]->get() : -1, POLLIN, 0},
                     feeder.active() ? feeder.want() : pollfd{-1, 0, 0}};
    if (::poll(fds, 3, -1) < 0) {
      if (errno == EINTR) continue;
      read_status = Status::io_error("cannot poll the command's pipes", argv[0], errno);
      break;
    }
    if (fds[2].revents != 0) feeder.on_ready();
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      const ssize_t n = ::read(fds[i].fd, chunk.data(), chunk.size());
      if (n > 0) {
        // A reader of our stream that left: closing ours gives the command
        // EPIPE there, as in a shell pipeline.
        if (!sink.take(i, std::string_view(chunk.data(), static_cast<std::size_t>(n)))) {
          *streams[i] = UniqueFd();
        }
      } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
        if (n < 0 && read_status) {
          read_status = Status::io_error("cannot read the command's output", argv[0], errno);
        }
        *streams[i] = UniqueFd();
      }
    }
  }
  // Closing our ends first means a command still writing or reading gets
  // EPIPE or EOF (after an error) instead of blocking us in waitpid.
  out_r = UniqueFd();
  err_r = UniqueFd();
  feeder.stop();

  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return Status::io_error("cannot wait for the command", argv[0], errno);
  }
  if (!read_status) return read_status;
  if (WIFSIGNALED(status)) {
    out.signal = WTERMSIG(status);
    out.exit_code = 128 + out.signal;
  } else {
    out.exit_code = WEXITSTATUS(status);
  }
  return Status::ok();
}

class CommandCache::Impl {
 public:
  Impl(const std::string& dir, std::shared_ptr<Clock> clock)
      : dir_(dir),
        clock_(std::move(clock)),
        region_(region_options(clock_, /*wait_for_fresh=*/true), "lmdb", backend_arguments(dir)) {}

  ExecOutcome run(const CommandSpec& requested, const ExecOptions& options) {
    check_options(requested, options);
    CommandSpec spec = requested;
    ExecOutcome outcome;
    if (std::string prefix; !take_input(spec, options, prefix)) {
      return run_uncached(spec, options, prefix);
    }
    outcome.key = command_key(spec);
    const Duration read_expiration =
        options.force ? Duration::zero() : lifetime_or_forever(options.ttl);
    bool ran = false;
    std::optional<WallTime> started;
    try {
      outcome.result = region_.get_or_create<CommandResult>(
          outcome.key,
          [&] {
            started = clock_->now();
            CommandResult result = run_for_creator(spec, options, outcome.overflow);
            ran = true;
            outcome.created_at = clock_->now();
            return result;
          },
          create_options(options, read_expiration, &outcome.overflow));
    } catch (const LaunchFailed& failed) {
      outcome.launch = failed.status;
      return outcome;
    }
    outcome.cached = !ran;
    if (ran) {
      // The stored entry's own time when it is this run's (a replay then
      // reports the same created_at); the run's end when it was not stored.
      if (const std::optional<Metadata> meta = region_.get_value_metadata(outcome.key);
          meta && meta->created_at >= *started) {
        outcome.created_at = meta->created_at;
      }
      return outcome;
    }

    // The header of the entry get_or_create just read, or of a newer one
    // stored since: never older than the result, so a refresh is never
    // started for a result that is still fresh.
    if (const std::optional<Metadata> meta = region_.get_value_metadata(outcome.key)) {
      outcome.created_at = meta->created_at;
    }
    if (options.stale && outcome.created_at &&
        age(clock_->now(), *outcome.created_at) >= *options.stale) {
      outcome.stale = true;
      // Someone holding the lock is already making a new result. A refresh
      // that cannot start (no fork) is left to the next caller: the stale
      // result is still this caller's answer.
      if (!region_.key_is_locked(outcome.key)) {
        outcome.refresh_started =
            start_refresh(spec, outcome.key, options, *options.stale).is_ok();
      }
    }
    return outcome;
  }

  std::string warm(const CommandSpec& requested, const ExecOptions& options) {
    check_options(requested, options);
    CommandSpec spec = requested;
    if (std::string prefix; !take_input(spec, options, prefix)) {
      throw bad_option("stdin is larger than max_input (" + std::to_string(options.max_input) +
                       " bytes): a run that reads it is never stored, so there is nothing to "
                       "warm");
    }
    const std::string key = command_key(spec);
    const WallTime requested_at = clock_->now();
    // Fresh in the refresher means "made after this request": a refresh that
    // finished meanwhile, or one running now, serves the request.
    throw_if_error(run_detached([&] {
      const Duration since = std::chrono::duration_cast<Duration>(clock_->now() - requested_at);
      return refresh_in_background(dir_, clock_, spec, key, options,
                                   std::max(since, Duration::zero()));
    }));
    return key;
  }

 private:
  // A stdin too large to key: the command reads all of it (what was read,
  // then the rest), its output passes through, and nothing is stored.
  ExecOutcome run_uncached(const CommandSpec& spec, const ExecOptions& options,
                           const std::string& prefix) {
    ExecOutcome outcome;
    outcome.overflow = Overflow::kInput;
    RunReport report;
    const RunOptions run{.input = &prefix,
                         .input_continues = true,
                         .max_output = 0,
                         .stream_overflow = options.stream_overflow};
    if (Status s = run_command(spec.argv, run, outcome.result, report); !s) {
      if (s.code() != StatusCode::kInvalidArgument) throw Error(s);
      outcome.launch = s;
      return outcome;
    }
    outcome.result.argv = spec.argv;
    outcome.created_at = clock_->now();
    return outcome;
  }

  Status start_refresh(const CommandSpec& spec, const std::string& key,
                       const ExecOptions& options, Duration fresh_for) {
    return run_detached(
        [&] { return refresh_in_background(dir_, clock_, spec, key, options, fresh_for); });
  }

  std::string dir_;
  std::shared_ptr<Clock> clock_;
  Region region_;
};

namespace {

std::string resolve_dir(const CommandCacheOptions& options) {
  if (!options.dir.empty()) return options.dir;
  std::string dir;
  if (Status s = default_cache_dir(dir); !s) throw ConfigError(s);
  return dir;
}

}  // namespace

CommandCache::CommandCache(CommandCacheOptions options)
    : dir_(resolve_dir(options)),
      impl_(std::make_unique<Impl>(dir_, options.clock ? options.clock : system_clock())) {}

CommandCache::~CommandCache() = default;

ExecOutcome CommandCache::run(const CommandSpec& spec, const ExecOptions& options) {
  return impl_->run(spec, options);
}

std::string CommandCache::warm(const CommandSpec& spec, const ExecOptions& options) {
  return impl_->warm(spec, options);
}

}  // namespace dogpile
