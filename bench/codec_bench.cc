// Codec and envelope costs, with memcpy of the same bytes as the floor.
//
// Encode and decode cover a whole envelope (header, payload, checksum), as a
// region pays them on every set and read. Each encode and decode reports
// bytes/s over the payload's input size so the memcpy rows compare directly.
#include <benchmark/benchmark.h>

#include <cstring>
#include <optional>
#include <string>

#include "demo.h"
#include "dogpile/codec.h"
#include "dogpile/envelope.h"

namespace dogpile {
namespace {

// The region default; nothing here comes near it.
constexpr std::size_t kMaxValueSize = std::size_t{256} << 20;

template <class T>
std::string envelope_of(CodecId codec, const T& value) {
  std::string bytes;
  encode_value(codec, value, EnvelopeMeta{.created_at_ns = 1}, std::nullopt, bytes);
  return bytes;
}

// Bytes of the record in the default (binary) envelope: the count its
// memcpy baseline copies.
std::size_t record_bytes() {
  static const std::size_t size = envelope_of(CodecId::kBinary, make_sample_record()).size();
  return size;
}

template <class T>
void run_encode(benchmark::State& state, CodecId codec, const T& value, std::size_t input_bytes) {
  std::string bytes;
  for (auto _ : state) {
    encode_value(codec, value, EnvelopeMeta{.created_at_ns = 1}, std::nullopt, bytes);
    benchmark::DoNotOptimize(bytes.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                          static_cast<std::int64_t>(input_bytes));
  state.counters["stored_bytes"] = static_cast<double>(bytes.size());
}

template <class T>
void run_decode(benchmark::State& state, CodecId codec, const T& value, std::size_t input_bytes) {
  const std::string bytes = envelope_of(codec, value);
  {
    // Time only a decode that is known to be right.
    EnvelopeView view;
    T decoded{};
    if (decode_envelope(bytes, kMaxValueSize, view) != DecodeStatus::kOk ||
        !decode_payload<T>(view.meta.codec, view.payload, decoded) || !(decoded == value)) {
      state.SkipWithError("value does not round-trip");
      return;
    }
  }
  for (auto _ : state) {
    EnvelopeView view;
    T decoded{};
    const bool ok = decode_envelope(bytes, kMaxValueSize, view) == DecodeStatus::kOk &&
                    decode_payload<T>(view.meta.codec, view.payload, decoded);
    benchmark::DoNotOptimize(ok);
    benchmark::DoNotOptimize(decoded);
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                          static_cast<std::int64_t>(input_bytes));
}

void BM_EncodeString(benchmark::State& state, CodecId codec, std::size_t size) {
  const std::string value(size, 'x');
  run_encode(state, codec, value, size);
}

void BM_DecodeString(benchmark::State& state, CodecId codec, std::size_t size) {
  const std::string value(size, 'x');
  run_decode(state, codec, value, size);
}

void BM_EncodeRecord(benchmark::State& state, CodecId codec) {
  run_encode(state, codec, make_sample_record(), record_bytes());
}

void BM_DecodeRecord(benchmark::State& state, CodecId codec) {
  run_decode(state, codec, make_sample_record(), record_bytes());
}

void run_memcpy(benchmark::State& state, std::size_t size) {
  const std::string source(size, 'x');
  std::string target(size, '\0');
  for (auto _ : state) {
    std::memcpy(target.data(), source.data(), size);
    benchmark::DoNotOptimize(target.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                          static_cast<std::int64_t>(size));
}

void BM_Memcpy(benchmark::State& state, std::size_t size) { run_memcpy(state, size); }

void BM_MemcpyRecord(benchmark::State& state) { run_memcpy(state, record_bytes()); }

// The envelope alone: header, checksum and validation around a 64 KiB payload.
void BM_Envelope(benchmark::State& state) {
  const std::string payload(64 * 1024, 'x');
  const EnvelopeMeta meta{.type_tag = 1, .codec = CodecId::kRaw, .created_at_ns = 1};
  std::string bytes;
  for (auto _ : state) {
    const std::size_t offset = begin_envelope(bytes, meta, std::nullopt);
    bytes.append(payload);
    finish_envelope(bytes, offset);
    EnvelopeView view;
    const DecodeStatus status = decode_envelope(bytes, kMaxValueSize, view);
    if (status != DecodeStatus::kOk || view.payload.size() != payload.size()) {
      state.SkipWithError("envelope does not decode");
      break;
    }
    benchmark::DoNotOptimize(view.payload.data());
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                          static_cast<std::int64_t>(payload.size()));
}

constexpr std::size_t k100B = 100;
constexpr std::size_t k1KiB = 1024;
constexpr std::size_t k64KiB = 64 * 1024;

// Names read "<codec>/<size>"; a formatter would space the slashes.
// clang-format off
#define DOGPILE_STRING_BENCHES(codec_id, codec_label)                       \
  BENCHMARK_CAPTURE(BM_EncodeString, codec_label/100B, codec_id, k100B);   \
  BENCHMARK_CAPTURE(BM_EncodeString, codec_label/1KiB, codec_id, k1KiB);   \
  BENCHMARK_CAPTURE(BM_EncodeString, codec_label/64KiB, codec_id, k64KiB); \
  BENCHMARK_CAPTURE(BM_DecodeString, codec_label/100B, codec_id, k100B);   \
  BENCHMARK_CAPTURE(BM_DecodeString, codec_label/1KiB, codec_id, k1KiB);   \
  BENCHMARK_CAPTURE(BM_DecodeString, codec_label/64KiB, codec_id, k64KiB)
// clang-format on

DOGPILE_STRING_BENCHES(CodecId::kRaw, raw);
DOGPILE_STRING_BENCHES(CodecId::kBinary, binary);
DOGPILE_STRING_BENCHES(CodecId::kPortableBinary, portable_binary);
DOGPILE_STRING_BENCHES(CodecId::kJson, json);

BENCHMARK_CAPTURE(BM_EncodeRecord, binary, CodecId::kBinary);
BENCHMARK_CAPTURE(BM_EncodeRecord, portable_binary, CodecId::kPortableBinary);
BENCHMARK_CAPTURE(BM_EncodeRecord, json, CodecId::kJson);
BENCHMARK_CAPTURE(BM_DecodeRecord, binary, CodecId::kBinary);
BENCHMARK_CAPTURE(BM_DecodeRecord, portable_binary, CodecId::kPortableBinary);
BENCHMARK_CAPTURE(BM_DecodeRecord, json, CodecId::kJson);

BENCHMARK_CAPTURE(BM_Memcpy, 100B, k100B);
BENCHMARK_CAPTURE(BM_Memcpy, 1KiB, k1KiB);
BENCHMARK_CAPTURE(BM_Memcpy, 64KiB, k64KiB);
BENCHMARK(BM_MemcpyRecord);

BENCHMARK(BM_Envelope);

}  // namespace
}  // namespace dogpile

BENCHMARK_MAIN();
