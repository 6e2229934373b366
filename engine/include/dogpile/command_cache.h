// CommandCache: any command's output, run once per key and replayed from a cache directory.
//
// A command (argv) is identified by a key: the XXH3-128 of its arguments plus
// its stdin when that carries data (a pipe or a file; see StdinPolicy) and,
// when asked, the working directory, named environment variables, the
// modification times of named files and a scope (command_key). The first
// caller of a key runs the command with its own environment and working
// directory, captures stdout, stderr and the exit status, and stores them in
// the "exec" region of the cache directory; later callers, in any process, get
// the stored result byte for byte. Concurrent callers of a missing key wait on
// the key's creation lock (the region's dogpile lock, which spans processes)
// and then read the one result, so the command runs once however many ask.
// With a ttl, old results are regenerated; with a stale threshold below it,
// a result older than that is returned at once while one detached process
// refreshes it (bkt's --stale). A run killed by a signal, or one whose output
// or stdin is larger than the limits, is never stored.
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

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>

#include "dogpile/clock.h"
#include "dogpile/config.h"
#include "dogpile/status.h"
#include "dogpile/type_info.h"

namespace dogpile {

// A command's run: how it ended, what it wrote, and what ran where.
struct CommandResult {
  // The exit status; 128 + signal when a signal killed it (as a shell reports it).
  std::int32_t exit_code = 0;
  // The signal that killed it; 0 when it exited.
  std::int32_t signal = 0;
  std::string out{};  // every byte written to stdout
  std::string err{};  // every byte written to stderr
  // The command line and the working directory it ran in, kept so that
  // `dogpile ls` and `get` can say what a stored result is. Filled in by
  // CommandCache; run_command leaves them empty.
  std::vector<std::string> argv{};
  std::string cwd{};

  // Exited with status 0.
  bool succeeded() const noexcept { return signal == 0 && exit_code == 0; }

  template <class Archive>
  void serialize(Archive& archive) {
    archive(exit_code, signal, out, err, argv, cwd);
  }
  friend bool operator==(const CommandResult&, const CommandResult&) = default;
};

// What a command reads on stdin, and whether those bytes are part of the key.
enum class StdinPolicy {
  // This process's stdin, judged when the command would run: a terminal,
  // /dev/null or a closed descriptor is handed to the command and is not part
  // of the key; anything else (a pipe, a file, a socket) is read to its end
  // first (up to ExecOptions::max_input), its bytes become part of the key,
  // and the command reads the same bytes. So `echo a | dogpile exec -- wc -c`
  // and `echo abc | ...` are two results. A pipe that is never closed blocks
  // the read, as it would block a command reading it: use kIgnore then.
  kAuto,
  // This process's stdin is handed to the command and is never part of the key.
  kIgnore,
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
  // Whether stdin is read and becomes part of the key (see StdinPolicy).
  // Default: StdinPolicy::kAuto.
  StdinPolicy stdin_policy = StdinPolicy::kAuto;
  // Bytes the command reads on stdin, part of the key ('i'); set, they win
  // over stdin_policy. CommandCache fills them in under kAuto.
  // Default: nullopt (the command inherits this process's stdin).
  std::optional<std::string> input{};
};

// The bytes command_key hashes: "dogpile-exec-key/1", then one field per item,
// each a tag byte, a u64 little-endian length and that many bytes:
//   'a' each argument, in order
//   'c' the working directory (with spec.cwd)
//   'e' each environment name, then 'v' its value, or 'u' (empty) when unset
//   'm' each file, then 'f' its i64 mtime ns and u64 size (16 bytes, LE), or
//       'x' (empty) when missing
//   's' the scope (when not empty)
//   'i' the XXH3-128 (16 bytes, canonical order) of input (when set and not
//       empty: an empty stdin is no input, as /dev/null is)
// Lengths make the encoding unambiguous: ["a b"] and ["a", "b"] differ.
// Throws Error when the working directory cannot be read, ConfigError for an
// environment name that is empty or holds '='.
std::string command_key_material(const CommandSpec& spec);

// The stored key: 32 lowercase hex digits of XXH3-128 (canonical byte order)
// of command_key_material(spec), after "<scope>/" when there is a scope.
std::string command_key(const CommandSpec& spec);

// How run_command feeds and captures a command.
struct RunOptions {
  // Written to the command's stdin, which is then closed.
  // Default: nullptr (the command inherits this process's stdin).
  const std::string* input = nullptr;
  // With input: after those bytes, copy the rest of this process's stdin to
  // the command (input is the part of it already read).
  // Default: false.
  bool input_continues = false;
  // Most bytes of stdout and stderr together kept in the result. Past it the
  // result holds none of the output: what was kept and everything after goes
  // to this process's stdout and stderr as it comes (stream_overflow), or is
  // read and dropped.
  // Default: no limit.
  std::size_t max_output = SIZE_MAX;
  // Default: true.
  bool stream_overflow = true;
};

// How run_command's capture went, beyond the result.
struct RunReport {
  // The output passed max_output: the result's out and err are empty.
  bool overflowed = false;
};

// Runs argv with this process's environment and working directory and
// captures stdout and stderr (read together, so neither pipe can fill and
// stall the command), feeding stdin as `options` say. Waits until both pipes
// are closed, then for the exit. A command that stops reading stdin, and a
// reader of streamed output that goes away, cost nothing but the rest of
// that stream (SIGPIPE is held off this thread meanwhile); the command then
// meets a closed pipe as it would in a shell pipeline.
// Fails with kInvalidArgument and the errno when the command cannot be
// started (ENOENT: not found; EACCES, ENOEXEC...: not executable), with
// kIOError when its output cannot be captured; `out` is then unspecified.
Status run_command(const std::vector<std::string>& argv, const RunOptions& options,
                   CommandResult& out, RunReport& report);
// The same, with this process's stdin and no output limit.
Status run_command(const std::vector<std::string>& argv, CommandResult& out);

// The most output a stored result holds (stdout and stderr together), and
// the most stdin read for a key: a result must fit the exec region's largest
// value, which is this plus room for the command line.
inline constexpr std::size_t kMaxExecOutput = std::size_t{256} << 20;

// Per-call options of CommandCache::run and warm.
struct ExecOptions {
  // Results older than this are regenerated; nullopt keeps a result until it
  // is removed (dogpile rm/clear, or eviction). Stored entries get ttl as
  // their expires_at, so purge can remove dead results.
  // Default: nullopt.
  std::optional<Duration> ttl{};
  // Needs ttl and must be shorter (bkt's --stale). A result older than this
  // but younger than ttl is returned at once and one detached process
  // refreshes it; one older than ttl is regenerated in the foreground.
  // Default: nullopt.
  std::optional<Duration> stale{};
  // Run again (under the creation lock) and store, whatever is stored.
  // Default: false.
  bool force = false;
  // A result with a non-zero exit or a signal is returned but not stored.
  // Default: false.
  bool discard_failures = false;
  // Store a run killed by a signal too (it is returned, never stored, without).
  // Default: false.
  bool cache_signals = false;
  // Output past this (stdout and stderr together) is not stored: see
  // ExecOutcome::overflow. At most kMaxExecOutput.
  // Default: kMaxExecOutput.
  std::size_t max_output = kMaxExecOutput;
  // Under StdinPolicy::kAuto, stdin past this is not read for a key: the
  // command runs uncached, reading all of it. At most kMaxExecOutput.
  // Default: kMaxExecOutput.
  std::size_t max_input = kMaxExecOutput;
  // Past a limit, write the output through to this process's stdout and
  // stderr (true) or read and drop it (false; for callers whose stdout
  // carries something else, such as one JSON document).
  // Default: true.
  bool stream_overflow = true;
};

// Why a run's result was too large to keep.
enum class Overflow {
  kNone,
  kOutput,  // stdout and stderr passed max_output
  kInput,   // stdin passed max_input
};

// What run returned.
struct ExecOutcome {
  std::string key{};     // the stored key (command_key); empty when stdin overflowed
  // OK, or why the command could not be started (run_command's
  // kInvalidArgument: errno ENOENT when not found, another errno when not
  // executable). Nothing is stored then and `result` is empty.
  Status launch{};
  CommandResult result{};
  bool cached = false;   // served from the cache, not run by this call
  // The command ran uncached: with stream_overflow its output went to this
  // process's stdout and stderr as it came (else it was dropped), result.out
  // and err are empty, and only the exit status is in result.
  Overflow overflow = Overflow::kNone;
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
  // and ConfigError for bad options (stale without ttl or not below it, an
  // empty argv, an environment name with '=').
  ExecOutcome run(const CommandSpec& spec, const ExecOptions& options = {});

  // Starts a detached process that runs the command and stores its result,
  // unless a result made after this call is stored by then or another refresh
  // of the key is running; returns the key at once. Throws ConfigError when
  // stdin (kAuto) is larger than max_input: such a run is never stored.
  std::string warm(const CommandSpec& spec, const ExecOptions& options = {});

  const std::string& dir() const noexcept { return dir_; }

 private:
  class Impl;
  std::string dir_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dogpile

// Version 2 added argv and cwd; version-1 results are regenerated.
DOGPILE_REGISTER_TYPE(dogpile::CommandResult, "dogpile.CommandResult", 2);
