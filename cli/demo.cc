#include "demo.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <type_traits>
#include <vector>

#include "dogpile/dogpile.h"
#include "strf.h"

namespace dogpile {
namespace {

// What the demo caches: which key it is for and who made it, so a worker can
// tell it got the value of its own key.
struct DemoValue {
  std::string key;
  std::int32_t worker = -1;
  std::int64_t pid = 0;

  template <class Archive>
  void serialize(Archive& archive) {
    archive(key, worker, pid);
  }
};

}  // namespace
}  // namespace dogpile

DOGPILE_REGISTER_TYPE(dogpile::DemoValue, "dogpile.demo.Value", 1);

namespace dogpile {
namespace {

using SteadyClock = std::chrono::steady_clock;

constexpr std::string_view kRegionName = "demo";
// Worker exit codes; 3 matches the CLI's "cache error".
constexpr int kWorkerOk = 0;
constexpr int kWorkerFailed = 1;
constexpr int kWorkerCacheError = 3;
// Codec timings: enough samples for a stable median, few enough to stay quick.
constexpr int kCodecIterations = 501;
// Longest payload the codec table decodes (the region default).
constexpr std::size_t kMaxValueSize = std::size_t{256} << 20;

enum class Outcome : std::uint8_t {
  kHit = 0,      // fresh on the first read, no lock taken
  kWaited = 1,   // missing at first; another process's creator supplied it
  kCreated = 2,  // this call ran the creator
};

// One get_or_create call as a worker reports it over its pipe. Records are
// far below PIPE_BUF, so each write arrives whole.
struct CallRecord {
  std::uint32_t key = 0;
  Outcome outcome = Outcome::kHit;
  std::uint8_t value_ok = 0;
  std::uint16_t reserved = 0;
  std::int64_t call_ns = 0;
};
static_assert(std::is_trivially_copyable_v<CallRecord>);

using cli::strf;

std::string key_name(int index, int keys) {
  const int width = static_cast<int>(std::to_string(std::max(keys - 1, 0)).size());
  return strf("demo:%0*d", std::max(width, 2), index);
}

double us_of(std::int64_t ns) { return static_cast<double>(ns) / 1e3; }

// Right-aligns UTF-8 `text` in `width` columns; printf would count "µ" as two.
std::string pad_left(const std::string& text, std::size_t width) {
  const auto is_lead_byte = [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; };
  const auto columns =
      static_cast<std::size_t>(std::count_if(text.begin(), text.end(), is_lead_byte));
  return columns >= width ? text : std::string(width - columns, ' ') + text;
}

// Milliseconds for creator-sized waits, microseconds for cache reads.
std::string duration_text(std::int64_t ns) {
  if (ns >= 1'000'000) return strf("%.1f ms", static_cast<double>(ns) / 1e6);
  return strf("%.1f µs", us_of(ns));
}

// Seconds that `count` creator calls of `create_ms` each take; in double, as
// the product overflows int at the option limits.
double seconds_of_creators(int count, int create_ms) {
  return static_cast<double>(count) * create_ms / 1000.0;
}

std::int64_t ns_between(SteadyClock::time_point from, SteadyClock::time_point to) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(to - from).count();
}

[[noreturn]] void throw_errno(const char* what) {
  throw std::system_error(errno, std::generic_category(), what);
}

bool write_all(int fd, const void* data, std::size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    size -= static_cast<std::size_t>(n);
  }
  return true;
}

// Blocks until the parent closes the other end of the start pipe, so all
// workers begin asking at the same moment.
void wait_for_start(int fd) {
  char byte;
  while (true) {
    const ssize_t n = ::read(fd, &byte, 1);
    if (n == 0) return;
    if (n < 0 && errno != EINTR) throw_errno("waiting for the start signal");
  }
}

// Runs `body` in the child of a fork() and never returns there: the child
// leaves through _exit so it neither flushes the parent's stdio buffers again
// nor runs the parent's static destructors.
template <class Body>
pid_t spawn(const char* role, int index, Body&& body) {
  const pid_t pid = ::fork();
  if (pid < 0) throw_errno("fork");
  if (pid > 0) return pid;
  int code = kWorkerOk;
  try {
    code = body();
  } catch (const Error& e) {
    std::fprintf(stderr, "dogpile: %s %d: %s\n", role, index, e.what());
    code = kWorkerCacheError;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dogpile: %s %d: %s\n", role, index, e.what());
    code = kWorkerFailed;
  }
  ::_exit(code);
}

struct ChildExit {
  bool ok = false;
  int code = -1;  // exit status, or -1 when killed by a signal
  std::string text;
};

ChildExit wait_child(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw_errno("waitpid");
  }
  ChildExit result;
  if (WIFEXITED(status)) {
    result.code = WEXITSTATUS(status);
    result.ok = result.code == 0;
    result.text = strf("exited with status %d", result.code);
  } else if (WIFSIGNALED(status)) {
    result.text = strf("killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
  } else {
    result.text = "ended in an unknown state";
  }
  return result;
}

struct Pipe {
  int read_fd = -1;
  int write_fd = -1;
};

Pipe make_pipe() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw_errno("pipe");
  return {fds[0], fds[1]};
}

void close_fd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

// ---- the processes ----

// Workers go through the keys in pairs, each pair starting at its own share
// of the keys: the two of a pair collide on every key they create (one
// creates, one waits), different pairs create different keys in parallel, and
// each pair ends on keys another pair has already made (hits).
int first_key(const DemoOptions& options, int worker) {
  const int pairs = (options.workers + 1) / 2;
  return static_cast<int>(static_cast<long long>(worker / 2) * options.keys / pairs);
}

// Erases the keys when asked to, then reports one byte per key: whether a
// value is stored there now, so the parent knows how many creations to expect.
int prepare_main(const DemoOptions& options, const std::string& dir, int report_fd) {
  Region region(RegionOptions{.name = std::string(kRegionName)}, "lmdb", {{"path", dir}});
  std::string present(static_cast<std::size_t>(options.keys), '\0');
  for (int k = 0; k < options.keys; ++k) {
    const std::string key = key_name(k, options.keys);
    if (options.fresh) region.erase(key);
    const std::optional<DemoValue> value = region.get<DemoValue>(key);
    present[static_cast<std::size_t>(k)] = value && value->key == key ? 1 : 0;
  }
  return write_all(report_fd, present.data(), present.size()) ? kWorkerOk : kWorkerFailed;
}

int worker_main(const DemoOptions& options, const std::string& dir, int index, int start_fd,
                int report_fd) {
  // Opened after fork(): each process has its own LMDB environment.
  Region region(RegionOptions{.name = std::string(kRegionName)}, "lmdb", {{"path", dir}});
  wait_for_start(start_fd);

  const int first = first_key(options, index);
  const auto create_time = std::chrono::milliseconds(options.create_ms);
  for (int i = 0; i < options.keys; ++i) {
    const int k = (first + i) % options.keys;
    const std::string key = key_name(k, options.keys);
    bool created = false;
    const RegionStats before = region.stats();
    const auto started = SteadyClock::now();
    const DemoValue value = region.get_or_create<DemoValue>(key, [&] {
      created = true;
      std::this_thread::sleep_for(create_time);
      return DemoValue{key, index, static_cast<std::int64_t>(::getpid())};
    });
    const auto finished = SteadyClock::now();
    const RegionStats after = region.stats();

    CallRecord record;
    record.key = static_cast<std::uint32_t>(k);
    record.outcome = created                    ? Outcome::kCreated
                     : after.hits > before.hits ? Outcome::kHit
                                                : Outcome::kWaited;
    record.value_ok = value.key == key ? 1 : 0;
    record.call_ns = ns_between(started, finished);
    if (!write_all(report_fd, &record, sizeof record)) throw_errno("reporting to the parent");
  }
  return kWorkerOk;
}

// ---- the parent ----

struct KeyTally {
  int calls = 0;
  int creations = 0;
  int hits = 0;
  int waits = 0;
  int bad_values = 0;
  std::int64_t longest_ns = 0;
  bool present_before = false;
};

// Reads every worker's records until each pipe reaches end of file.
void collect_records(std::vector<int>& fds, std::vector<KeyTally>& tally,
                     std::vector<std::string>& failures) {
  std::vector<std::string> pending(fds.size());
  std::size_t open = fds.size();
  while (open > 0) {
    std::vector<pollfd> polled;
    std::vector<std::size_t> owner;
    for (std::size_t w = 0; w < fds.size(); ++w) {
      if (fds[w] < 0) continue;
      polled.push_back({fds[w], POLLIN, 0});
      owner.push_back(w);
    }
    if (::poll(polled.data(), polled.size(), -1) < 0) {
      if (errno == EINTR) continue;
      throw_errno("poll");
    }
    for (std::size_t i = 0; i < polled.size(); ++i) {
      if (polled[i].revents == 0) continue;
      const std::size_t w = owner[i];
      char buffer[4096];
      const ssize_t n = ::read(fds[w], buffer, sizeof buffer);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        if (n < 0) failures.push_back(strf("reading worker %zu's report: %s", w, strerror(errno)));
        close_fd(fds[w]);
        --open;
        continue;
      }
      pending[w].append(buffer, static_cast<std::size_t>(n));
      std::size_t used = 0;
      while (pending[w].size() - used >= sizeof(CallRecord)) {
        CallRecord record;
        std::memcpy(&record, pending[w].data() + used, sizeof record);
        used += sizeof record;
        if (record.key >= tally.size()) {
          failures.push_back(strf("worker %zu reported unknown key %u", w, record.key));
          continue;
        }
        KeyTally& t = tally[record.key];
        ++t.calls;
        switch (record.outcome) {
          case Outcome::kCreated:
            ++t.creations;
            break;
          case Outcome::kHit:
            ++t.hits;
            break;
          case Outcome::kWaited:
            ++t.waits;
            break;
        }
        if (record.value_ok == 0) ++t.bad_values;
        t.longest_ns = std::max(t.longest_ns, record.call_ns);
      }
      pending[w].erase(0, used);
    }
  }
}

struct CodecRow {
  std::string sample;
  CodecId codec;
  bool supported = false;
  std::size_t payload_size = 0;
  std::size_t stored_size = 0;
  double encode_us = 0;
  double decode_us = 0;
};

double median_us(std::vector<std::int64_t>& samples) {
  const auto middle = samples.begin() + static_cast<std::ptrdiff_t>(samples.size() / 2);
  std::nth_element(samples.begin(), middle, samples.end());
  return us_of(*middle);
}

// Times encode_value and decode_envelope + decode_payload of `value`, and
// checks that what comes back equals what went in.
template <class T>
CodecRow measure_codec(const std::string& sample, CodecId codec, const T& value,
                       std::vector<std::string>& failures) {
  CodecRow row{sample, codec};
  row.supported = codec_supports<T>(codec);
  if (!row.supported) return row;

  const EnvelopeMeta meta{.created_at_ns = 1};
  std::string bytes;
  std::vector<std::int64_t> encode_ns, decode_ns;
  encode_ns.reserve(kCodecIterations);
  decode_ns.reserve(kCodecIterations);
  bool round_trip_ok = true;
  for (int i = 0; i < kCodecIterations; ++i) {
    auto t0 = SteadyClock::now();
    encode_value(codec, value, meta, std::nullopt, bytes);
    auto t1 = SteadyClock::now();
    encode_ns.push_back(ns_between(t0, t1));

    T decoded{};
    EnvelopeView view;
    t0 = SteadyClock::now();
    const bool ok = decode_envelope(bytes, kMaxValueSize, view) == DecodeStatus::kOk &&
                    decode_payload<T>(view.meta.codec, view.payload, decoded);
    t1 = SteadyClock::now();
    decode_ns.push_back(ns_between(t0, t1));
    if (!ok || !(decoded == value)) round_trip_ok = false;
    if (i == 0 && ok) row.payload_size = view.payload.size();
  }
  row.stored_size = bytes.size();
  row.encode_us = median_us(encode_ns);
  row.decode_us = median_us(decode_ns);
  if (!round_trip_ok) {
    failures.push_back(strf("%s did not round-trip through the %s codec", sample.c_str(),
                            std::string(codec_name(codec)).c_str()));
  }
  return row;
}

void print_codec_table(std::ostream& out, std::vector<std::string>& failures,
                       std::vector<DemoCodecResult>& results) {
  const SampleRecord record = make_sample_record();
  const std::string text(1024, 'x');
  const std::string record_label = "record (1,000 int64, 20 map)";
  const std::string text_label = "std::string (1 KiB)";

  std::vector<CodecRow> rows;
  for (CodecId codec :
       {CodecId::kBinary, CodecId::kPortableBinary, CodecId::kJson, CodecId::kRaw}) {
    rows.push_back(measure_codec(record_label, codec, record, failures));
  }
  for (CodecId codec :
       {CodecId::kRaw, CodecId::kBinary, CodecId::kPortableBinary, CodecId::kJson}) {
    rows.push_back(measure_codec(text_label, codec, text, failures));
  }
  for (const CodecRow& row : rows) {
    results.push_back({row.sample, std::string(codec_name(row.codec)), row.supported,
                       row.payload_size, row.stored_size, row.encode_us, row.decode_us});
  }

  out << "\nCodecs: median time of " << kCodecIterations
      << " encodes and decodes each; stored = payload + 48-byte header + 8-byte checksum\n";
  out << strf("%-29s %-16s %10s %10s %s %s\n", "sample", "codec", "payload B", "stored B",
              pad_left("encode µs", 10).c_str(), pad_left("decode µs", 10).c_str());
  std::string last_sample;
  for (const CodecRow& row : rows) {
    const std::string label = row.sample == last_sample ? "" : row.sample;
    last_sample = row.sample;
    const std::string name(codec_name(row.codec));
    if (!row.supported) {
      out << strf("%-29s %-16s %10s %10s %10s %10s\n", label.c_str(), name.c_str(), "n/a", "n/a",
                  "n/a", "n/a");
      continue;
    }
    out << strf("%-29s %-16s %10zu %10zu %10.2f %10.2f\n", label.c_str(), name.c_str(),
                row.payload_size, row.stored_size, row.encode_us, row.decode_us);
  }
  out << "(raw carries byte payloads only, so the record has no raw row)\n";
}

}  // namespace

int run_demo(const DemoOptions& options, std::ostream& out, DemoReport* report) {
  DemoReport unused;
  DemoReport& result_report = report != nullptr ? *report : unused;
  std::string dir = options.dir;
  if (dir.empty()) throw_if_error(default_cache_dir(dir));
  // Checked here, in this process, so a bad path is reported once with its name.
  throw_if_error(ensure_cache_dir(dir));
  result_report.dir = dir;

  out << strf("dogpile demo: %d worker processes ask for the same %d keys; a creator takes %d ms\n",
              options.workers, options.keys, options.create_ms)
      << "workers go in pairs, each pair starting at its own share of the keys\n"
      << "cache directory: " << dir << " (region \"" << kRegionName << "\")\n";
  // Forked children must not inherit unwritten output and print it twice.
  out.flush();
  std::fflush(nullptr);

  std::vector<std::string> failures;
  int result = 0;

  // Setup in its own process, so the parent never opens the LMDB
  // environment its workers will open.
  std::vector<KeyTally> tally(static_cast<std::size_t>(options.keys));
  {
    Pipe report = make_pipe();
    const pid_t pid = spawn("setup", 0, [&] {
      close_fd(report.read_fd);
      return prepare_main(options, dir, report.write_fd);
    });
    close_fd(report.write_fd);
    std::string present;
    char buffer[4096];
    while (true) {
      const ssize_t n = ::read(report.read_fd, buffer, sizeof buffer);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      present.append(buffer, static_cast<std::size_t>(n));
    }
    close_fd(report.read_fd);
    const ChildExit exit = wait_child(pid);
    if (!exit.ok || present.size() != tally.size()) {
      result_report.failures.push_back("the setup process " + exit.text + "; the demo did not run");
      out << "FAILED: the setup process " << exit.text << "; the demo did not run\n";
      return exit.code == kWorkerCacheError ? kWorkerCacheError : 1;
    }
    for (std::size_t k = 0; k < tally.size(); ++k) tally[k].present_before = present[k] != 0;
  }
  const int present_before = static_cast<int>(std::count_if(
      tally.begin(), tally.end(), [](const KeyTally& t) { return t.present_before; }));
  result_report.present_before = present_before;
  if (options.fresh) out << "--fresh: erased the demo's keys first\n";
  out << strf("%d of %d keys already in the cache before the run\n\n", present_before,
              options.keys);
  out.flush();

  Pipe start = make_pipe();
  std::vector<pid_t> pids;
  std::vector<int> report_fds;
  try {
    for (int w = 0; w < options.workers; ++w) {
      Pipe report = make_pipe();
      const pid_t pid = spawn("worker", w, [&] {
        close_fd(start.write_fd);
        close_fd(report.read_fd);
        for (int& fd : report_fds) close_fd(fd);
        return worker_main(options, dir, w, start.read_fd, report.write_fd);
      });
      close_fd(report.write_fd);
      pids.push_back(pid);
      report_fds.push_back(report.read_fd);
    }
  } catch (...) {
    // Do not leave started workers waiting for a start signal.
    for (pid_t pid : pids) ::kill(pid, SIGKILL);
    for (pid_t pid : pids) wait_child(pid);
    for (int& fd : report_fds) close_fd(fd);
    close_fd(start.read_fd);
    close_fd(start.write_fd);
    throw;
  }
  close_fd(start.read_fd);
  const auto started = SteadyClock::now();
  close_fd(start.write_fd);

  collect_records(report_fds, tally, failures);
  bool worker_cache_error = false;
  for (std::size_t w = 0; w < pids.size(); ++w) {
    const ChildExit exit = wait_child(pids[w]);
    if (!exit.ok) {
      failures.push_back(
          strf("worker %zu (pid %d) %s", w, static_cast<int>(pids[w]), exit.text.c_str()));
      if (exit.code == kWorkerCacheError) worker_cache_error = true;
    }
  }
  const std::int64_t wall_ns = ns_between(started, SteadyClock::now());

  // Per-key table.
  out << strf("%-10s %9s %6s %6s %14s %20s\n", "key", "creations", "hits", "waits", "longest call",
              "creator time saved");
  int calls = 0, creations = 0, hits = 0, waits = 0, served_from_disk = 0;
  for (int k = 0; k < options.keys; ++k) {
    const KeyTally& t = tally[static_cast<std::size_t>(k)];
    const std::string key = key_name(k, options.keys);
    const double saved_s = seconds_of_creators(t.calls - t.creations, options.create_ms);
    out << strf("%-10s %9d %6d %6d %s %18.2f s\n", key.c_str(), t.creations, t.hits, t.waits,
                pad_left(duration_text(t.longest_ns), 14).c_str(), saved_s);
    result_report.keys.push_back(
        {key, t.present_before, t.creations, t.hits, t.waits, t.longest_ns, saved_s});
    calls += t.calls;
    creations += t.creations;
    hits += t.hits;
    waits += t.waits;
    if (t.present_before && t.creations == 0) ++served_from_disk;

    const int expected = t.present_before ? 0 : 1;
    if (t.creations != expected) {
      failures.push_back(strf("%s: %d creations, expected %d (%s before the run)", key.c_str(),
                              t.creations, expected, t.present_before ? "cached" : "absent"));
    }
    if (t.calls != options.workers) {
      failures.push_back(
          strf("%s: %d calls reported, expected %d", key.c_str(), t.calls, options.workers));
    }
    if (t.bad_values > 0) {
      failures.push_back(
          strf("%s: %d calls returned another key's value", key.c_str(), t.bad_values));
    }
  }
  const double saved_total_s = seconds_of_creators(calls - creations, options.create_ms);
  out << strf("%-10s %9d %6d %6d %14s %18.2f s\n", "total", creations, hits, waits, "",
              saved_total_s);

  // Totals and what the cache saved.
  const double uncached_wall_s = seconds_of_creators(options.keys, options.create_ms);
  out << "\n"
      << strf("calls: %d (%d workers x %d keys): %d creations, %d hits, %d waits\n", calls,
              options.workers, options.keys, creations, hits, waits)
      << strf("creator time avoided: (%d calls - %d creations) x %d ms = %.2f s\n", calls,
              creations, options.create_ms, saved_total_s)
      << strf(
             "wall time: %.3f s; without the cache each worker would run %d creators back to "
             "back: %d x %d ms = %.2f s\n",
             wall_ns / 1e9, options.keys, options.keys, options.create_ms, uncached_wall_s);
  if (present_before > 0) {
    out << strf("%d of %d values served from the cache on disk, %d creations\n", served_from_disk,
                options.keys, creations);
  } else {
    out << strf(
        "cold cache: %d creations for %d keys across %d processes; %d of %d calls served "
        "from the cache\n",
        creations, options.keys, options.workers, calls - creations, calls);
  }
  out.flush();

  result_report.calls = calls;
  result_report.creations = creations;
  result_report.hits = hits;
  result_report.waits = waits;
  result_report.creator_time_saved_s = saved_total_s;
  result_report.wall_s = wall_ns / 1e9;
  result_report.uncached_wall_s = uncached_wall_s;

  print_codec_table(out, failures, result_report.codecs);
  result_report.failures = failures;

  if (failures.empty()) {
    out << "\nchecks: all passed\n";
  } else {
    out << "\nchecks: " << failures.size() << " FAILED\n";
    for (const std::string& failure : failures) out << "  FAILED: " << failure << "\n";
    result = worker_cache_error ? kWorkerCacheError : 1;
  }
  out.flush();
  return result;
}

}  // namespace dogpile
