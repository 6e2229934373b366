// The `dogpile` subcommands that look inside a cache directory and manage it:
// stats, ls, get, rm, purge, clear, invalidate, verify, compact, and demo.
//
// Each add_<name>_command registers one subcommand on `app`. Its parse
// callback stores the work in `run`; main() calls run() after parsing, inside
// the handler that turns dogpile::Error into exit code 3. The commands only
// parse and print: the work is dogpile::Store's (dogpile/store.h).
//
// Every command takes --dir (default: default_cache_dir()) and --json (one
// JSON document on stdout; errors stay text on stderr).
//
// Thread safety: call from main() only; run() writes to std::cout and std::cerr.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace dogpile::cli {

// Refuses an empty value, naming the option: an empty --dir, region or key
// would otherwise widen what a command acts on (the default directory,
// every region), so `--dir "$UNSET"` is a usage error, never the default.
const CLI::Validator& not_empty();

// Refuses anything but a plain decimal number that fits in 64 bits: "-5"
// would otherwise wrap to a huge count, "1e3" or "99999999999999999999"
// be misread.
const CLI::Validator& unsigned_number();

// A duration as parse_duration reads it ("90s", "1h30m", "2d"), longer
// than 0; the error quotes the text.
const CLI::Validator& positive_duration();

// Exit codes of every subcommand.
inline constexpr int kExitOk = 0;
inline constexpr int kExitNotFound = 1;    // no such key or region; a demo check failed
inline constexpr int kExitUsage = 2;       // bad arguments
inline constexpr int kExitCacheError = 3;  // unusable cache, corrupt entry, failed verify, I/O

CLI::App* add_stats_command(CLI::App& app, std::function<int()>& run);
CLI::App* add_ls_command(CLI::App& app, std::function<int()>& run);
CLI::App* add_get_command(CLI::App& app, std::function<int()>& run);
CLI::App* add_rm_command(CLI::App& app, std::function<int()>& run);
CLI::App* add_purge_command(CLI::App& app, std::function<int()>& run);
CLI::App* add_clear_command(CLI::App& app, std::function<int()>& run);
CLI::App* add_invalidate_command(CLI::App& app, std::function<int()>& run);
CLI::App* add_verify_command(CLI::App& app, std::function<int()>& run);
CLI::App* add_compact_command(CLI::App& app, std::function<int()>& run);
CLI::App* add_demo_command(CLI::App& app, std::function<int()>& run);

}  // namespace dogpile::cli
