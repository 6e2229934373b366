#include "exec.h"
#include "commands.h"

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <poll.h>

#include "dogpile/command_cache.h"
#include "dogpile/config.h"

namespace dogpile::cli {
namespace {

constexpr int kExitCannotExecute = 126;  // as a shell: found, but cannot be run
constexpr int kExitNotFound = 127;       // as a shell: no such command
constexpr int kExitWriteFailed = 3;  // as main(): output that was not written is not success

struct ExecArgs {
  std::string dir;
  bool json = false;
  std::string ttl;
  std::string stale;
  bool discard_failures = false;
  bool cache_signals = false;
  bool ignore_stdin = false;
  std::string max_output;
  std::string max_input;
  bool warm = false;
  bool force = false;
  CommandSpec spec;
};

// Writes all of `bytes` to `fd`, through short writes, EINTR and a
// non-blocking descriptor. False with errno set on failure.
bool write_all(int fd, std::string_view bytes) {
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

// The length of the valid UTF-8 sequence at the start of `s` (no overlongs,
// no surrogates, nothing past U+10FFFF), or 0 when it is not one.
std::size_t utf8_sequence(std::string_view s) {
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
  const auto cont = [&](std::size_t i, unsigned lo = 0x80, unsigned hi = 0xbf) {
    return i < s.size() && byte(i) >= lo && byte(i) <= hi;
  };
  const unsigned b = byte(0);
  if (b < 0x80) return 1;
  if (b >= 0xc2 && b <= 0xdf) return cont(1) ? 2 : 0;
  if (b == 0xe0) return cont(1, 0xa0) && cont(2) ? 3 : 0;
  if ((b >= 0xe1 && b <= 0xec) || b == 0xee || b == 0xef) return cont(1) && cont(2) ? 3 : 0;
  if (b == 0xed) return cont(1, 0x80, 0x9f) && cont(2) ? 3 : 0;
  if (b == 0xf0) return cont(1, 0x90) && cont(2) && cont(3) ? 4 : 0;
  if (b >= 0xf1 && b <= 0xf3) return cont(1) && cont(2) && cont(3) ? 4 : 0;
  if (b == 0xf4) return cont(1, 0x80, 0x8f) && cont(2) && cont(3) ? 4 : 0;
  return 0;
}

// A JSON string of arbitrary bytes: valid UTF-8 is copied, control
// characters are escaped, and each byte that is not part of valid UTF-8
// becomes \u00XX (so a decoder sees U+0080..U+00FF for it, as Latin-1 would).
void append_json_string(std::string& out, std::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  const auto escape_byte = [&](unsigned char c) {
    out += "\\u00";
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 0xf]);
  };
  out.push_back('"');
  while (!bytes.empty()) {
    const unsigned char c = static_cast<unsigned char>(bytes.front());
    const std::size_t n = utf8_sequence(bytes);
    if (n == 0) {
      escape_byte(c);
      bytes.remove_prefix(1);
      continue;
    }
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          escape_byte(c);
        } else {
          out.append(bytes.substr(0, n));
        }
    }
    bytes.remove_prefix(n);
  }
  out.push_back('"');
}

// "2024-05-01T12:34:56.789Z"
std::string iso8601_utc(WallTime t) {
  const auto secs = std::chrono::floor<std::chrono::seconds>(t);
  const auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(t - secs).count();
  const std::time_t time = static_cast<std::time_t>(secs.time_since_epoch().count());
  std::tm tm{};
  ::gmtime_r(&time, &tm);
  char buf[64];
  const std::size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  char frac[32];
  std::snprintf(frac, sizeof frac, ".%03dZ", static_cast<int>(millis % 1000));
  return std::string(buf, n) + frac;
}

std::string outcome_json(const ExecOutcome& o) {
  std::string out;
  out.reserve(o.result.out.size() + o.result.err.size() + 256);
  out += "{\"key\":";
  append_json_string(out, o.key);
  out += ",\"cached\":";
  out += o.cached ? "true" : "false";
  out += ",\"stale\":";
  out += o.stale ? "true" : "false";
  out += ",\"created_at\":";
  if (o.created_at) {
    append_json_string(out, iso8601_utc(*o.created_at));
  } else {
    out += "null";
  }
  out += ",\"exit_code\":" + std::to_string(o.result.exit_code);
  out += ",\"signal\":";
  out += o.result.signal != 0 ? std::to_string(o.result.signal) : "null";
  out += ",\"stdout\":";
  append_json_string(out, o.result.out);
  out += ",\"stderr\":";
  append_json_string(out, o.result.err);
  out += "}\n";
  return out;
}

// Option values are checked by their validators already.
std::optional<Duration> duration_arg(const std::string& text) {
  if (text.empty()) return std::nullopt;
  Duration d{};
  if (!parse_duration(text, d)) return std::nullopt;
  return d;
}

std::size_t size_arg(const std::string& text, std::size_t fallback) {
  std::uint64_t n = 0;
  if (text.empty() || !parse_size(text, n)) return fallback;
  return static_cast<std::size_t>(n);
}

int report_write_failure() {
  const int saved = errno;
  write_all(STDERR_FILENO,
            std::string("dogpile: exec: cannot write the output: ") + std::strerror(saved) + "\n");
  return kExitWriteFailed;
}

int run_exec(ExecArgs args) {
  ExecOptions options;
  options.ttl = duration_arg(args.ttl);
  options.stale = duration_arg(args.stale);
  options.force = args.force;
  options.discard_failures = args.discard_failures;
  options.cache_signals = args.cache_signals;
  options.max_output = size_arg(args.max_output, kMaxExecOutput);
  options.max_input = size_arg(args.max_input, kMaxExecOutput);
  // One JSON document on stdout: output too large for it is dropped, and
  // the run reported as an error below.
  options.stream_overflow = !args.json;
  if (args.ignore_stdin) args.spec.stdin_policy = StdinPolicy::kIgnore;
  if (options.stale && options.ttl && *options.stale >= *options.ttl) {
    write_all(STDERR_FILENO, "dogpile: exec: --stale " + args.stale +
                                 " must be shorter than --ttl " + args.ttl +
                                 ": results older than --stale are refreshed in the background, "
                                 "older than --ttl in the foreground\nRun 'dogpile exec --help' "
                                 "for usage.\n");
    return kExitUsage;
  }

  CommandCache cache({.dir = args.dir});
  if (args.warm) {
    cache.warm(args.spec, options);
    return 0;
  }
  const ExecOutcome outcome = cache.run(args.spec, options);
  if (!outcome.launch) {
    const int err = outcome.launch.sys_errno();
    const std::string message =
        "dogpile: exec: " + args.spec.argv.front() + ": " +
        (err == ENOENT ? std::string("command not found") : std::string(std::strerror(err))) +
        "\n";
    write_all(STDERR_FILENO, message);
    return err == ENOENT ? kExitNotFound : kExitCannotExecute;
  }
  if (args.json) {
    if (outcome.overflow != Overflow::kNone) {
      const bool input = outcome.overflow == Overflow::kInput;
      write_all(STDERR_FILENO,
                std::string("dogpile: exec: the command's ") +
                    (input ? "stdin" : "output") + " is larger than " +
                    (input ? "--max-input" : "--max-output") + " (" +
                    std::to_string(input ? options.max_input : options.max_output) +
                    " bytes): nothing was stored, and --json cannot carry the output (exit " +
                    std::to_string(outcome.result.exit_code) + ")\n");
      return kExitCacheError;
    }
    if (!write_all(STDOUT_FILENO, outcome_json(outcome))) return report_write_failure();
    return 0;
  }
  if (!write_all(STDOUT_FILENO, outcome.result.out)) return report_write_failure();
  if (!write_all(STDERR_FILENO, outcome.result.err)) return report_write_failure();
  return outcome.result.exit_code;
}

// A name setenv would take: not empty, no '='.
const CLI::Validator& env_name() {
  static const CLI::Validator validator(
      [](const std::string& name) -> std::string {
        if (name.empty()) return "must not be empty";
        if (name.find('=') != std::string::npos) {
          return "'" + name + "' is not a variable name (it holds '='); give the name only";
        }
        return {};
      },
      "", "NAME");
  return validator;
}

// Sizes up to what one stored result can hold.
const CLI::Validator& exec_limit() {
  static const CLI::Validator validator(
      [](const std::string& text) -> std::string {
        std::uint64_t n = 0;
        if (Status s = parse_size(text, n); !s) return s.message();
        if (n > kMaxExecOutput) {
          return "'" + text + "' is more than a stored result can hold (256MiB)";
        }
        return {};
      },
      "", "SIZE");
  return validator;
}

}  // namespace

CLI::App* add_exec_command(CLI::App& app, std::function<int()>& run) {
  auto args = std::make_shared<ExecArgs>();
  CLI::App* cmd = app.add_subcommand(
      "exec",
      "Cache a command's output: run it once per key, replay its stdout, stderr and exit "
      "status");
  // Everything from the command name on belongs to the command, options included.
  cmd->positionals_at_end();
  cmd->add_option("--dir", args->dir,
                  "Cache directory (default: $DOGPILE_DIR, else $XDG_CACHE_HOME/dogpile, "
                  "else ~/.cache/dogpile)")
      ->type_name("DIR")
      ->check(not_empty());
  CLI::Option* json = cmd->add_flag(
      "--json", args->json,
      "Print one JSON object (key, cached, stale, created_at, exit_code, signal, stdout, "
      "stderr) instead of replaying; exit 0");
  CLI::Option* ttl = cmd->add_option("--ttl", args->ttl,
                                     "Regenerate results older than this (e.g. 90s, 10m, "
                                     "1h30m, 2d); default: keep until removed")
                         ->type_name("DURATION")
                         ->check(positive_duration());
  cmd->add_option("--stale", args->stale,
                  "Shorter than --ttl: print a result older than this at once and refresh it "
                  "in one detached background process (as bkt's --stale)")
      ->type_name("DURATION")
      ->check(positive_duration())
      ->needs(ttl);
  cmd->add_flag("--cwd", args->spec.cwd, "Make the working directory part of the key");
  cmd->add_option("--env", args->spec.env,
                  "Make this environment variable's value (or its absence) part of the key; "
                  "repeatable")
      ->type_name("NAME")
      ->check(env_name())
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->expected(1);
  cmd->add_option("--modtime", args->spec.modtime,
                  "Make this file's modification time and size (or its absence) part of the "
                  "key; repeatable")
      ->type_name("FILE")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->expected(1);
  cmd->add_flag("--discard-failures", args->discard_failures,
                "Do not cache a run that exits non-zero or is killed by a signal");
  cmd->add_flag("--cache-signals", args->cache_signals,
                "Cache a run killed by a signal too (by default it is printed, not stored)");
  cmd->add_flag("--ignore-stdin", args->ignore_stdin,
                "Pass stdin to the command without reading it; it is not part of the key");
  cmd->add_option("--max-output", args->max_output,
                  "Cache at most this much output (stdout and stderr together; default "
                  "256MiB); a command writing more streams through and is not cached")
      ->type_name("SIZE")
      ->check(exec_limit());
  cmd->add_option("--max-input", args->max_input,
                  "Read at most this much stdin for the key (default 256MiB); with more, the "
                  "command runs uncached and reads all of it")
      ->type_name("SIZE")
      ->check(exec_limit());
  CLI::Option* warm = cmd->add_flag(
      "--warm", args->warm, "Refresh the result in a detached background process; print nothing");
  CLI::Option* force = cmd->add_flag("--force", args->force, "Run again and store the new result");
  warm->excludes(force)->excludes(json);
  cmd->add_option("--scope", args->spec.scope,
                  "Keep these results apart from the same command's other results; the key "
                  "becomes SCOPE/HASH")
      ->type_name("SCOPE");
  cmd->add_option("CMD", args->spec.argv,
                  "The command and its arguments; everything from CMD on is passed to it "
                  "(write -- before CMD when CMD starts with -)")
      ->type_name("")
      ->required();
  cmd->footer(
      "The key is the command line, plus stdin when it is a pipe or a file (read to its end\n"
      "first; a terminal or /dev/null is not read), plus the working directory, variables and\n"
      "files named by --cwd, --env and --modtime, plus --scope. A run killed by a signal is\n"
      "not cached unless --cache-signals; one that exits non-zero is, unless\n"
      "--discard-failures. Exit status: the command's own (128+N when signal N killed it; 0\n"
      "with --json or --warm), 126 when it cannot be executed, 127 when it is not found, 2 for\n"
      "a usage error, 3 for a cache error.\n"
      "\n"
      "Examples:\n"
      "  dogpile exec -- curl -s https://example.com/status.json\n"
      "  dogpile exec --ttl 1h --stale 10m --cwd -- git log --oneline -20\n"
      "  jq .name package.json | dogpile exec -- ./lookup.sh   # stdin is part of the key\n"
      "  dogpile exec --modtime Cargo.lock --env RUSTFLAGS -- cargo metadata --format-version 1\n"
      "  dogpile exec --warm --ttl 10m -- ./slow-report.sh   # e.g. from cron");
  cmd->callback([args, &run] { run = [args] { return run_exec(*args); }; });
  return cmd;
}

}  // namespace dogpile::cli
