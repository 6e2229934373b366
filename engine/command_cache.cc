#include "dogpile/command_cache.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
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
// caller's to report; failing to capture its output is an error.
CommandResult run_for_creator(const std::vector<std::string>& argv) {
  CommandResult result;
  if (Status s = run_command(argv, result); !s) {
    if (s.code() == StatusCode::kInvalidArgument) throw LaunchFailed{s};
    throw Error(s);
  }
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
  return o;
}

ConfigMap backend_arguments(const std::string& dir) { return ConfigMap{{"path", dir}}; }

// What every read of a result compares its age with: `lifetime` when there is
// one, else forever. Explicit, so it also wins over a stored expires_at that
// an earlier call with another ttl wrote.
Duration lifetime_or_forever(const std::optional<Duration>& lifetime) {
  return lifetime ? *lifetime : Duration::max();
}

// ttl + stale: how long a result is any use at all (as long as there is,
// when the sum is longer).
std::optional<Duration> usable_for(const ExecOptions& options) {
  if (!options.ttl) return std::nullopt;
  return internal::saturating_add(*options.ttl, options.stale.value_or(Duration::zero()));
}

// now - then, clamped: `then` comes from stored bytes.
Duration age(WallTime now, WallTime then) {
  return Duration(internal::saturating_sub(internal::wall_ns(now), internal::wall_ns(then)));
}

void check_options(const CommandSpec& spec, const ExecOptions& options) {
  if (spec.argv.empty()) {
    throw ConfigError(Status::error(StatusCode::kInvalidArgument, "exec: no command given"));
  }
  if (options.stale && !options.ttl) {
    throw ConfigError(Status::error(StatusCode::kInvalidArgument, "exec: stale needs a ttl"));
  }
  if ((options.ttl && options.ttl->count() <= 0) ||
      (options.stale && options.stale->count() < 0)) {
    throw ConfigError(Status::error(StatusCode::kInvalidArgument,
                                    "exec: ttl must be positive and stale not negative"));
  }
}

CreateOptions<CommandResult> create_options(const ExecOptions& options, Duration read_expiration) {
  CreateOptions<CommandResult> c;
  c.expiration_time = read_expiration;
  c.ttl = usable_for(options);
  if (options.discard_failures) {
    c.should_cache = [](const CommandResult& r) { return r.succeeded(); };
  }
  return c;
}

// In a detached process: runs `spec` and stores the result unless a result
// younger than `fresh_for` is stored or another caller holds the key's
// creation lock (that caller is making a new result already).
int refresh_in_background(const std::string& dir, const std::shared_ptr<Clock>& clock,
                          const CommandSpec& spec, const std::string& key,
                          const ExecOptions& options, Duration fresh_for) {
  Region region(region_options(clock, /*wait_for_fresh=*/false), "lmdb", backend_arguments(dir));
  region.get_or_create<CommandResult>(
      key,
      [&] { return run_for_creator(spec.argv); },
      create_options(options, fresh_for));
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

Status run_command(const std::vector<std::string>& argv, CommandResult& out) {
  out = CommandResult{};
  if (argv.empty()) return Status::error(StatusCode::kInvalidArgument, "no command given");

  int out_fds[2];
  int err_fds[2];
  if (::pipe2(out_fds, O_CLOEXEC) != 0) return Status::io_error("cannot create a pipe", "", errno);
  UniqueFd out_r(out_fds[0]);
  UniqueFd out_w(out_fds[1]);
  if (::pipe2(err_fds, O_CLOEXEC) != 0) return Status::io_error("cannot create a pipe", "", errno);
  UniqueFd err_r(err_fds[0]);
  UniqueFd err_w(err_fds[1]);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  // dup2 leaves the copies on 1 and 2 without close-on-exec; the originals close at exec.
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
  if (rc != 0) {
    return Status::error(StatusCode::kInvalidArgument, "cannot run the command", argv[0], rc);
  }

  // Both pipes at once: a command filling stderr while we block on stdout
  // would otherwise stall forever.
  Status read_status;
  std::string chunk(64 * 1024, '\0');
  pollfd fds[2] = {{out_r.get(), POLLIN, 0}, {err_r.get(), POLLIN, 0}};
  std::string* sinks[2] = {&out.out, &out.err};
  int open_pipes = 2;
  while (open_pipes > 0) {
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      read_status = Status::io_error("cannot poll the command's output", argv[0], errno);
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      const ssize_t n = ::read(fds[i].fd, chunk.data(), chunk.size());
      if (n > 0) {
        sinks[i]->append(chunk.data(), static_cast<std::size_t>(n));
      } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
        if (n < 0 && read_status) {
          read_status = Status::io_error("cannot read the command's output", argv[0], errno);
        }
        fds[i].fd = -1;  // poll ignores negative descriptors
        --open_pipes;
      }
    }
  }
  // Closing our read ends first means a command still writing gets EPIPE
  // (after a read error) instead of blocking us in waitpid.
  { UniqueFd close_out(out_r.release()); }
  { UniqueFd close_err(err_r.release()); }

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

  ExecOutcome run(const CommandSpec& spec, const ExecOptions& options) {
    check_options(spec, options);
    ExecOutcome outcome;
    outcome.key = command_key(spec);
    const Duration read_expiration =
        options.force ? Duration::zero() : lifetime_or_forever(usable_for(options));
    bool ran = false;
    std::optional<WallTime> started;
    try {
      outcome.result = region_.get_or_create<CommandResult>(
          outcome.key,
          [&] {
            started = clock_->now();
            CommandResult result = run_for_creator(spec.argv);
            ran = true;
            outcome.created_at = clock_->now();
            return result;
          },
          create_options(options, read_expiration));
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
    if (options.ttl && outcome.created_at &&
        age(clock_->now(), *outcome.created_at) >= *options.ttl) {
      outcome.stale = true;
      // Someone holding the lock is already making a new result. A refresh
      // that cannot start (no fork) is left to the next caller: the stale
      // result is still this caller's answer.
      if (!region_.key_is_locked(outcome.key)) {
        outcome.refresh_started = start_refresh(spec, outcome.key, options, *options.ttl).is_ok();
      }
    }
    return outcome;
  }

  std::string warm(const CommandSpec& spec, const ExecOptions& options) {
    check_options(spec, options);
    const std::string key = command_key(spec);
    const WallTime requested = clock_->now();
    // Fresh in the refresher means "made after this request": a refresh that
    // finished meanwhile, or one running now, serves the request.
    throw_if_error(run_detached([&] {
      const Duration since = std::chrono::duration_cast<Duration>(clock_->now() - requested);
      return refresh_in_background(dir_, clock_, spec, key, options,
                                   std::max(since, Duration::zero()));
    }));
    return key;
  }

 private:
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
