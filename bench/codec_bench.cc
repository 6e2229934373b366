// Codec and envelope costs, each beside memcpy of the same bytes in the same run.
//
// Every benchmark is named serialize/<row>/<column>. A row is one piece of
// work (encode or decode of one payload); its columns are the codecs (binary,
// portable_binary, json, raw) and `memcpy`, the floor: copying the row's
// bytes once into a buffer that is already there. The codec rows time the
// payload alone; the envelope's own cost (header and XXH3 checksum) is in the
// envelope_* rows, and decode_64KiB_default_path is what a region read pays:
// decode_envelope, then decode_payload into a fresh value. Every benchmark
// reports bytes/s over the same count (the value's bytes), so throughputs in
// a row compare directly.
#include <benchmark/benchmark.h>
#include <xxhash.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "demo.h"
#include "dogpile/codec.h"
#include "dogpile/envelope.h"

namespace dogpile {
namespace {

// The region default; nothing here comes near it.
constexpr std::size_t kMaxValueSize = std::size_t{256} << 20;

constexpr std::size_t k100B = 100;
constexpr std::size_t k1KiB = 1024;
constexpr std::size_t k64KiB = 64 * 1024;

constexpr CodecId kCodecs[] = {CodecId::kBinary, CodecId::kPortableBinary, CodecId::kJson,
                               CodecId::kRaw};

// A string of `size` bytes that is not one repeated byte.
std::string text_of_size(std::size_t size) {
  std::string s(size, '\0');
  for (std::size_t i = 0; i < size; ++i) s[i] = static_cast<char>('a' + (i * 7) % 26);
  return s;
}

void set_bytes(benchmark::State& state, std::size_t bytes) {
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                          static_cast<std::int64_t>(bytes));
}

// ---- rows ----

template <class T>
void run_encode(benchmark::State& state, CodecId codec, const T& value, std::size_t value_bytes) {
  std::string bytes;
  for (auto _ : state) {
    bytes.clear();
    encode_payload(codec, value, bytes);
    benchmark::DoNotOptimize(bytes.data());
    benchmark::ClobberMemory();
  }
  set_bytes(state, value_bytes);
  state.counters["stored_bytes"] = static_cast<double>(bytes.size());
}

template <class T>
void run_decode(benchmark::State& state, CodecId codec, const T& value, std::size_t value_bytes) {
  std::string bytes;
  encode_payload(codec, value, bytes);
  {
    // Time only a decode that is known to be right.
    T decoded{};
    if (!decode_payload<T>(codec, bytes, decoded) || !(decoded == value)) {
      state.SkipWithError("value does not round-trip");
      return;
    }
  }
  for (auto _ : state) {
    // A fresh value each time, as a region read makes one.
    T decoded{};
    const bool ok = decode_payload<T>(codec, bytes, decoded);
    benchmark::DoNotOptimize(ok);
    benchmark::DoNotOptimize(decoded);
  }
  set_bytes(state, value_bytes);
}

// What a region read of a std::string pays after the backend hands over the
// envelope: decode_envelope (checks and checksum), then decode_payload.
void run_decode_read_path(benchmark::State& state, CodecId codec, const std::string& value) {
  std::string bytes;
  encode_value(codec, value, EnvelopeMeta{.created_at_ns = 1}, std::nullopt, bytes);
  for (auto _ : state) {
    EnvelopeView view;
    std::string decoded;
    const bool ok = decode_envelope(bytes, kMaxValueSize, view) == DecodeStatus::kOk &&
                    decode_payload<std::string>(view.meta.codec, view.payload, decoded);
    if (!ok) {
      state.SkipWithError("value does not decode");
      break;
    }
    benchmark::DoNotOptimize(decoded);
  }
  set_bytes(state, value.size());
}

void run_envelope_encode(benchmark::State& state, const std::string& payload) {
  const EnvelopeMeta meta{.type_tag = 1, .codec = CodecId::kRaw, .created_at_ns = 1};
  for (auto _ : state) {
    std::string bytes = encode_envelope(meta, std::nullopt, payload);
    benchmark::DoNotOptimize(bytes.data());
    benchmark::ClobberMemory();
  }
  set_bytes(state, payload.size());
}

void run_envelope_decode(benchmark::State& state, const std::string& payload) {
  const EnvelopeMeta meta{.type_tag = 1, .codec = CodecId::kRaw, .created_at_ns = 1};
  const std::string bytes = encode_envelope(meta, std::nullopt, payload);
  for (auto _ : state) {
    EnvelopeView view;
    const DecodeStatus status = decode_envelope(bytes, kMaxValueSize, view);
    if (status != DecodeStatus::kOk || view.payload.size() != payload.size()) {
      state.SkipWithError("envelope does not decode");
      break;
    }
    benchmark::DoNotOptimize(view.payload.data());
  }
  set_bytes(state, payload.size());
}

// libxxhash's plain XXH3_64bits (the baseline x86-64 build), for comparison
// with the checksum decode_envelope computes.
void run_xxh3(benchmark::State& state, const std::string& bytes) {
  for (auto _ : state) {
    benchmark::DoNotOptimize(XXH3_64bits(bytes.data(), bytes.size()));
  }
  set_bytes(state, bytes.size());
}

void run_memcpy(benchmark::State& state, std::size_t size) {
  const std::string source = text_of_size(size);
  std::string target(size, '\0');
  for (auto _ : state) {
    std::memcpy(target.data(), source.data(), size);
    benchmark::DoNotOptimize(target.data());
    benchmark::ClobberMemory();
  }
  set_bytes(state, size);
}

// ---- registration ----

void add(const std::string& row, const std::string& column,
         std::function<void(benchmark::State&)> fn) {
  const std::string name = "serialize/" + row + "/" + column;
  benchmark::RegisterBenchmark(name.c_str(), [fn = std::move(fn)](benchmark::State& state) {
    fn(state);
  });
}

void add_memcpy(const std::string& row, std::size_t size) {
  add(row, "memcpy", [size](benchmark::State& state) { run_memcpy(state, size); });
}

// encode_<label> and decode_<label> rows for one value, in every codec that
// can carry it.
template <class T>
void add_codec_rows(const std::string& label, const T& value, std::size_t value_bytes) {
  for (const CodecId codec : kCodecs) {
    if (!codec_supports<T>(codec)) continue;
    const std::string column(codec_name(codec));
    add("encode_" + label, column, [codec, value, value_bytes](benchmark::State& state) {
      run_encode(state, codec, value, value_bytes);
    });
  }
  add_memcpy("encode_" + label, value_bytes);
  for (const CodecId codec : kCodecs) {
    if (!codec_supports<T>(codec)) continue;
    const std::string column(codec_name(codec));
    add("decode_" + label, column, [codec, value, value_bytes](benchmark::State& state) {
      run_decode(state, codec, value, value_bytes);
    });
  }
  add_memcpy("decode_" + label, value_bytes);
}

void add_envelope_rows(const std::string& label, std::size_t size) {
  const std::string payload = text_of_size(size);
  add("envelope_encode_" + label, "envelope",
      [payload](benchmark::State& state) { run_envelope_encode(state, payload); });
  add_memcpy("envelope_encode_" + label, size);
  add("envelope_decode_" + label, "envelope",
      [payload](benchmark::State& state) { run_envelope_decode(state, payload); });
  add_memcpy("envelope_decode_" + label, size);
}

void register_benchmarks() {
  add_codec_rows("100B", text_of_size(k100B), k100B);
  add_codec_rows("1KiB", text_of_size(k1KiB), k1KiB);
  add_codec_rows("64KiB_string", text_of_size(k64KiB), k64KiB);

  // The record's bytes are counted as its binary (default) payload.
  const SampleRecord record = make_sample_record();
  std::string record_payload;
  encode_payload(CodecId::kBinary, record, record_payload);
  add_codec_rows("record", record, record_payload.size());

  add_envelope_rows("100B", k100B);
  add_envelope_rows("1KiB", k1KiB);
  add_envelope_rows("64KiB", k64KiB);

  const std::string checksum_input = text_of_size(k64KiB);
  add("checksum_64KiB", "xxh3_baseline",
      [checksum_input](benchmark::State& state) { run_xxh3(state, checksum_input); });
  add_memcpy("checksum_64KiB", k64KiB);

  // The target row: a region read of a 64 KiB std::string, envelope
  // checked. binary is the region's default codec.
  const std::string value = text_of_size(k64KiB);
  for (const CodecId codec : kCodecs) {
    add("decode_64KiB_default_path", std::string(codec_name(codec)),
        [codec, value](benchmark::State& state) { run_decode_read_path(state, codec, value); });
  }
  add_memcpy("decode_64KiB_default_path", k64KiB);
}

}  // namespace
}  // namespace dogpile

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  dogpile::register_benchmarks();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
