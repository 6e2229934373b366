// CommandCache: any command's output, run once per key and replayed from a cache directory.
//
// A command (argv) is identified by a key: the XXH3-128 of its arguments plus,
// when asked, the working directory, named environment variables, the
// modification times of named files and a scope (command_key). The first
// caller of a key runs the command with its own stdin, environment and working
// directory, captures stdout, stderr and the exit status, and stores them in
// the "exec" region of the cache directory; later callers, in any process, get
// the stored result byte for byte. Concurrent callers of a missing key wait on
// the key's creation lock (the region's dogpile lock, which spans processes)
// and then read the one result, so the command runs once however many ask.
// With a ttl, old results are regenerated; with a stale window on top, an old
// result is returned at once while one detached process refreshes it.
//
//   dogpile::CommandCache cache({.dir = "/var/cache/app"});
//   dogpile::ExecOutcome o = cache.run({.argv = {"git", "status"}, .cwd = true},
//                                      {.ttl = std::chrono::seconds(30)});
//   // o.result.out, o.result.err, o.result.exit_code
//
// Thread safety: a CommandCache is for one thread at a time. Background
// refreshes (a stale result, warm) fork() the calling process and keep running
// library code in the child, so they need a single-threaded caller.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <cereal/types/string.hpp>

#include "dogpile/clock.h"
#include "dogpile/config.h"
#include "dogpile/status.h"
#include "dogpile/type_info.h"

namespace dogpile {

// How a command ended and what it wrote.
struct CommandResult {
  // The exit status; 128 + signal when a signal killed it (as a shell reports it).
  std::int32_t exit_code = 0;
  // The signal that killed it; 0 when it exited.
  std::int32_t signal = 0;
  std::string out{};  // every byte written to stdout
  std::string err{};  // every byte written to stderr

  // Exited with status 0.
  bool succeeded() const noexcept { return signal == 0 && exit_code == 0; }

  template <class Archive>
  void serialize(Archive& archive) {
    archive(exit_code, signal, out, err);
  }
  friend bool operator==(const CommandResult&, const CommandResult&) = default;
};

// What identifies a command's result. The key covers argv always, and each
// of the other fields only when it is set.
struct CommandSpec {
  // The command and its arguments; argv[0] is looked up in PATH as execvp does.
  // Default: empty (invalid: run and command_key need a command).
  std::vector<std::string> argv{};
  // The absolute working directory (getcwd) is part of the key.
  // Default: false.
  bool cwd = false;
  // Environment variables whose values are part of the key; an unset variable
  // differs from an empty one. Order and repeats do not matter (sorted, deduplicated).
  // Default: none.
  std::vector<std::string> env{};
  // Files whose modification time (ns) and size are part of the key, as given
  // (relative paths against the working directory); a file that cannot be
  // stat()ed counts as missing. Order and repeats do not matter.
  // Default: none.
  std::vector<std::string> modtime{};
  // A name that separates otherwise equal keys; it is also the stored key's
  // prefix ("<scope>/<hash>"), so `dogpile ls exec --prefix <scope>/` lists a scope.
  // Default: empty (no scope).
  std::string scope{};
};

// The bytes command_key hashes: "dogpile-exec-key/1", then one field per item,
// each a tag byte, a u64 little-endian length and that many bytes:
//   'a' each argument, in order
//   'c' the working directory (with spec.cwd)
//   'e' each environment name, then 'v' its value, or 'u' (empty) when unset
//   'm' each file, then 'f' its i64 mtime ns and u64 size (16 bytes, LE), or
//       'x' (empty) when missing
//   's' the scope (when not empty)
// Lengths make the encoding unambiguous: ["a b"] and ["a", "b"] differ.
// Throws Error when the working directory cannot be read.
std::string command_key_material(const CommandSpec& spec);

// The stored key: 32 lowercase hex digits of XXH3-128 (canonical byte order)
// of command_key_material(spec), after "<scope>/" when there is a scope.
std::string command_key(const CommandSpec& spec);

// Runs argv with this process's stdin, environment and working directory and
// captures all of stdout and stderr (read together, so neither pipe can fill
// and stall the command). Waits until both pipes are closed, then for the exit.
// Fails with kInvalidArgument and the errno when the command cannot be
// started (ENOENT: not found; EACCES, ENOEXEC...: not executable), with
// kIOError when its output cannot be captured; `out` is then unspecified.
Status run_command(const std::vector<std::string>& argv, CommandResult& out);

// Per-call options of CommandCache::run and warm.
struct ExecOptions {
  // Results older than this are regenerated; nullopt keeps a result until it
  // is removed (dogpile rm/clear, or eviction). Stored entries get
  // ttl + stale as their expires_at, so purge can remove dead results.
  // Default: nullopt.
  std::optional<Duration> ttl{};
  // Needs ttl. A result older than ttl but younger than ttl + stale is
  // returned at once and one detached process refreshes it; an older one is
  // regenerated in the foreground.
  // Default: nullopt.
  std::optional<Duration> stale{};
  // Run again (under the creation lock) and store, whatever is stored.
  // Default: false.
  bool force = false;
  // A result with a non-zero exit or a signal is returned but not stored.
  // Default: false.
  bool discard_failures = false;
};

// What run returned.
struct ExecOutcome {
  std::string key{};     // the stored key (command_key)
  // OK, or why the command could not be started (run_command's
  // kInvalidArgument: errno ENOENT when not found, another errno when not
  // executable). Nothing is stored then and `result` is empty.
  Status launch{};
  CommandResult result{};
  bool cached = false;   // served from the cache, not run by this call
  bool stale = false;    // older than ttl, served while a background refresh runs
  // This call started that background refresh (false when another caller's
  // refresh was running, or the process could not fork).
  bool refresh_started = false;
  // When the result was made: the stored entry's created_at, or when this
  // call's run finished. nullopt only when another caller's result was removed
  // before it could be read back.
  std::optional<WallTime> created_at{};
};

struct CommandCacheOptions {
  // Cache directory (created 0700 when missing).
  // Default: default_cache_dir() ($DOGPILE_DIR, $XDG_CACHE_HOME/dogpile, ~/.cache/dogpile).
  std::string dir{};
  // Wall clock for created_at and ages.
  // Default: system_clock().
  std::shared_ptr<Clock> clock{};
};

class CommandCache {
 public:
  // The region holding every command result of a cache directory.
  static constexpr const char* kRegion = "exec";

  // Opens the cache directory; throws StoreError (naming the path) or
  // ConfigError when it cannot.
  explicit CommandCache(CommandCacheOptions options = {});
  ~CommandCache();
  CommandCache(const CommandCache&) = delete;
  CommandCache& operator=(const CommandCache&) = delete;

  // The stored result of `spec`, or the result of running it now (once across
  // every process asking at the same time). Throws Error on cache failures
  // and for bad options (stale without ttl, an empty argv).
  ExecOutcome run(const CommandSpec& spec, const ExecOptions& options = {});

  // Starts a detached process that runs the command and stores its result,
  // unless a result made after this call is stored by then or another refresh
  // of the key is running; returns the key at once.
  std::string warm(const CommandSpec& spec, const ExecOptions& options = {});

  const std::string& dir() const noexcept { return dir_; }

 private:
  class Impl;
  std::string dir_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dogpile

DOGPILE_REGISTER_TYPE(dogpile::CommandResult, "dogpile.CommandResult", 1);
