// The body of the per-codec fuzz targets (raw_fuzz.cc, binary_fuzz.cc,
// portable_binary_fuzz.cc, json_fuzz.cc), which differ only in the codec.
//
// Each input is used twice. First as a payload: decode_payload of the bytes
// into every type of fuzz_types.h must not crash, leak or hang, and whatever
// decodes must survive a round trip through the same codec. Then as a recipe
// for values (FuzzedDataProvider): strings with any bytes, doubles with any
// bit pattern (NaN payloads, infinities, -0), records nested a few levels,
// each of which must survive the same round trip; this finds values the
// encoder writes and the decoder then refuses or changes.
#pragma once

#include <fuzzer/FuzzedDataProvider.h>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_types.h"

namespace dogpile::fuzz {

inline double take_double(FuzzedDataProvider& in) {
  return std::bit_cast<double>(in.ConsumeIntegral<std::uint64_t>());
}

inline std::string take_string(FuzzedDataProvider& in) { return in.ConsumeRandomLengthString(64); }

inline NumberTable take_table(FuzzedDataProvider& in) {
  NumberTable table;
  const std::size_t rows = in.ConsumeIntegralInRange<std::size_t>(0, 4);
  for (std::size_t r = 0; r < rows; ++r) {
    std::vector<double>& row = table[take_string(in)];
    const std::size_t columns = in.ConsumeIntegralInRange<std::size_t>(0, 6);
    for (std::size_t c = 0; c < columns; ++c) row.push_back(take_double(in));
  }
  return table;
}

inline Record take_record(FuzzedDataProvider& in, int depth) {
  Record record;
  record.name = take_string(in);
  record.id = in.ConsumeIntegral<std::int32_t>();
  record.enabled = in.ConsumeBool();
  if (in.ConsumeBool()) record.note = take_string(in);
  switch (in.ConsumeIntegralInRange(0, 3)) {
    case 0:
      break;
    case 1:
      record.extra = in.ConsumeIntegral<std::int64_t>();
      break;
    case 2:
      record.extra = take_double(in);
      break;
    default:
      record.extra = take_string(in);
      break;
  }
  const std::size_t flags = in.ConsumeIntegralInRange<std::size_t>(0, 4);
  for (std::size_t i = 0; i < flags; ++i) record.flags.insert(in.ConsumeIntegral<std::uint16_t>());
  record.table = take_table(in);
  if (depth > 0) {
    const std::size_t children = in.ConsumeIntegralInRange<std::size_t>(0, 3);
    for (std::size_t i = 0; i < children; ++i) record.children.push_back(take_record(in, depth - 1));
    if (in.ConsumeBool()) record.next = std::make_unique<Record>(take_record(in, depth - 1));
  }
  return record;
}

inline int fuzz_codec(CodecId codec, const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  check_decode<std::string>(codec, bytes);
  check_decode<std::vector<std::uint8_t>>(codec, bytes);
  check_decode<std::vector<char>>(codec, bytes);
  check_decode<std::vector<std::int64_t>>(codec, bytes);
  check_decode<NumberTable>(codec, bytes);
  check_decode<Record>(codec, bytes);

  FuzzedDataProvider in(data, size);
  const std::string text = in.ConsumeRandomLengthString(256);
  check_round_trip(codec, text);
  check_round_trip(codec, std::vector<std::uint8_t>(text.begin(), text.end()));
  if (codec == CodecId::kRaw) return 0;  // the types below are not raw's
  std::vector<std::int64_t> numbers;
  const std::size_t count = in.ConsumeIntegralInRange<std::size_t>(0, 16);
  for (std::size_t i = 0; i < count; ++i) numbers.push_back(in.ConsumeIntegral<std::int64_t>());
  check_round_trip(codec, numbers);
  check_round_trip(codec, take_table(in));
  check_round_trip(codec, take_record(in, 3));
  return 0;
}

}  // namespace dogpile::fuzz
