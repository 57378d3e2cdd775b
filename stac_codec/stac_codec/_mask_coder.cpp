// The hot loops of stac_codec.mask_wire (its format and checks live there, in Python):
// context-modelled arithmetic coding of class-id masks, block-mode downsampling and label
// upsampling. Why C++: an adaptive arithmetic coder is sequential, pixel by pixel; in Python it
// would take seconds per mask, here about a millisecond.
//
// Coding. A mask is coded in raster order with an adaptive binary range coder (the LZMA
// carry-less encoder, 16-bit probabilities that learn fast at first and settle to a 1/32 rate).
// Each decision's context is what the decoder already knows:
// - Flat context (W == N == NW == NE): the decoder can see how far the row above stays that
//   class; one decision says whether the whole stretch continues, so most of a mask costs
//   next to nothing per pixel. A break costs its position: guessed from where the row above's
//   class change moved since the row before it (boundaries are smooth), else Elias-gamma.
// - Elsewhere (near a boundary): is it W? N? NE? NW? (in turn, each in the context of the
//   neighbours' equality pattern and of the guessed boundary position), else the class itself
//   through a binary tree in the context of W.
// - With a prediction both ends hold (the previous mask sent): where the causal neighbours
//   agree with it, one decision per stretch says whether the row keeps following it (measured,
//   not a wire mode: the model's boundaries flicker, so following stretches break often).
// - With a reference both ends hold (the previous mask sent, JBIG2-refinement style): the
//   reference is context only. A flat stretch's decision is taken in the context of whether
//   the reference changes inside it, its break is first guessed where the reference's is and
//   the arriving class as the reference's; near a boundary the reference's pixel is the first
//   candidate, in the context of which neighbour it equals and whether the reference is
//   uniform around it. A lossy encoder moves a break to the reference's where it may
//   (temporal freedom: fewer flickering boundaries to pay for).
// A lossy encoder may give a pixel the class the model expects instead of its own, when both
// classes are movable (large) and the expected class occurs within `tolerance` pixels of it in
// the original (a square window): boundaries move by at most that much and small classes stay exact. The decoder
// is the same for both.
// Decoding is bounded: it writes exactly width x height pixels and reads at most a few bytes
// past the payload before it reports the data as damaged.

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

namespace {

// --- the binary range coder ------------------------------------------------------------------

constexpr int kProbBits = 16;
constexpr uint32_t kTop = 1u << 24;
constexpr int kRateSteps = 30;
constexpr int32_t kProbMin = 48;
constexpr int32_t kProbMax = (1 << kProbBits) - 48;

struct Rates {
  int32_t step[kRateSteps + 1];
  Rates() {
    for (int n = 0; n <= kRateSteps; ++n) step[n] = static_cast<int32_t>(65536.0 / (n + 1.6));
  }
};
const Rates kRates;

// P(bit == 1) in 1/65536 and how many bits it has seen (the learning rate falls with it).
struct Prob {
  uint16_t p = 1 << (kProbBits - 1);
  uint8_t n = 0;
  void update(int bit) {
    const int32_t target = bit ? (1 << kProbBits) : 0;
    const int32_t moved =
        p + static_cast<int32_t>((static_cast<int64_t>(target - p) * kRates.step[n]) >> 16);
    p = static_cast<uint16_t>(std::clamp(moved, kProbMin, kProbMax));
    if (n < kRateSteps) ++n;
  }
};

class RangeEncoder {
 public:
  int bit(Prob& prob, int value) {
    const uint32_t bound = (range_ >> kProbBits) * prob.p;
    if (value) {
      range_ = bound;
    } else {
      low_ += bound;
      range_ -= bound;
    }
    prob.update(value);
    while (range_ < kTop) {
      range_ <<= 8;
      shift_low();
    }
    return value;
  }
  std::vector<uint8_t> finish() {
    for (int i = 0; i < 5; ++i) shift_low();
    return std::move(out_);
  }

 private:
  void shift_low() {
    if (static_cast<uint32_t>(low_) < 0xFF000000u || (low_ >> 32) != 0) {
      const uint8_t carry = static_cast<uint8_t>(low_ >> 32);
      uint8_t pending = cache_;
      do {
        out_.push_back(static_cast<uint8_t>(pending + carry));
        pending = 0xFF;
      } while (--cache_size_ != 0);
      cache_ = static_cast<uint8_t>(static_cast<uint32_t>(low_) >> 24);
    }
    ++cache_size_;
    low_ = static_cast<uint32_t>(low_) << 8;
  }
  std::vector<uint8_t> out_;
  uint64_t low_ = 0;
  uint32_t range_ = 0xFFFFFFFFu;
  uint8_t cache_ = 0;
  uint64_t cache_size_ = 1;
};

class RangeDecoder {
 public:
  RangeDecoder(const uint8_t* data, size_t size) : data_(data), size_(size) {
    for (int i = 0; i < 5; ++i) code_ = (code_ << 8) | next();
  }
  int bit(Prob& prob, int /*value: the encoder's*/) {
    const uint32_t bound = (range_ >> kProbBits) * prob.p;
    int value;
    if (code_ < bound) {
      range_ = bound;
      value = 1;
    } else {
      code_ -= bound;
      range_ -= bound;
      value = 0;
    }
    prob.update(value);
    while (range_ < kTop) {
      range_ <<= 8;
      code_ = (code_ << 8) | next();
    }
    return value;
  }
  size_t overrun() const { return overrun_; }

 private:
  uint32_t next() {
    if (pos_ < size_) return data_[pos_++];
    ++overrun_;
    return 0;
  }
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  size_t overrun_ = 0;
  uint32_t code_ = 0;
  uint32_t range_ = 0xFFFFFFFFu;
};

// --- the model ------------------------------------------------------------------------------

constexpr int kMaxLogRun = 15;   // run-length buckets (rows are at most 16384 pixels)
constexpr int kCandidates = 5;   // W, N, NE, NW, the prediction
constexpr int kPatterns = 64 * 8;
constexpr int kPredictionKinds = 5;
constexpr int kGuessKinds = 6;   // none, or the pixel's offset from the guess in -2..2
constexpr int kNoGuess = -1000000;
constexpr int kMaxShift = 48;    // a class change this far from one in the row above is new
constexpr int kRefKinds = 10;    // the reference pixel is W, N, NE, NW or none; x 3x3 uniform

int ilog2(uint32_t v) { return 31 - __builtin_clz(v | 1); }

// The first i in [from, to) with a[i] != b[i] (b: nullptr = `value` everywhere), or `to`;
// eight bytes at a time, since most of a mask is long runs.
inline int first_difference(const uint8_t* a, const uint8_t* b, uint8_t value, int from, int to) {
  const uint64_t broadcast = 0x0101010101010101ull * value;
  int i = from;
  for (; i + 8 <= to; i += 8) {
    uint64_t x, y = broadcast;
    std::memcpy(&x, a + i, 8);
    if (b) std::memcpy(&y, b + i, 8);
    if (const uint64_t diff = x ^ y) return i + (__builtin_ctzll(diff) >> 3);
  }
  for (; i < to; ++i)
    if (a[i] != (b ? b[i] : value)) return i;
  return to;
}

struct Model {
  explicit Model(int class_bits) : class_bits(class_bits), tree(256u << class_bits) {}
  int class_bits;
  // flat stretches: [first row][log2 length][the last one broke][no guess / outside / inside]
  Prob run_whole[2][kMaxLogRun + 1][2][3];
  Prob break_at_guess;
  Prob break_length[2][kMaxLogRun + 1][kMaxLogRun + 2];
  Prob break_mantissa[kMaxLogRun + 2][2];
  Prob break_class_above[3];
  // stretches that follow the prediction: [log2 length][the last one broke]
  Prob follow_whole[kMaxLogRun + 1][2];
  Prob follow_length[kMaxLogRun + 1][kMaxLogRun + 2];
  Prob follow_mantissa[kMaxLogRun + 2][2];
  Prob leave[kCandidates];
  Prob boundary[kPatterns * kPredictionKinds * kGuessKinds][kCandidates];
  std::vector<Prob> tree;  // [W][node]: a class none of the candidates had
  // coding against a reference (the previous mask both ends hold) as context:
  // flat stretches: [first row][log2 length][the last one broke][guess kind][the reference in
  // the stretch: all W / changes inside / not W where it starts]
  Prob ref_run_whole[2][kMaxLogRun + 1][2][3][3];
  Prob break_at_ref[2];      // [the row-above guess says the same]
  Prob break_class_ref[2];   // [the break is at the reference's]
  std::vector<Prob> ref_boundary;  // [pattern / 8][ref kind][guess kind][candidate]
  void use_reference() {
    ref_boundary.resize(static_cast<size_t>(kPatterns / 8) * kRefKinds * kGuessKinds * kCandidates);
  }
};

// What a lossy encoder may change (see the top of the file).
struct Lossy {
  const uint8_t* original;
  int width, height, tolerance;
  uint64_t movable;      // classes (ids < 64) that may move
  uint16_t confident;    // the candidate's probability from which a pixel may take it
  bool may(size_t index, int to) const {
    const int from = original[index];
    if (to >= 64 || from >= 64 || !((movable >> to) & (movable >> from) & 1)) return false;
    const int r = static_cast<int>(index / width), c = static_cast<int>(index % width);
    for (int y = std::max(0, r - tolerance); y <= std::min(height - 1, r + tolerance); ++y) {
      const uint8_t* row = original + static_cast<size_t>(y) * width;
      for (int x = std::max(0, c - tolerance); x <= std::min(width - 1, c + tolerance); ++x)
        if (row[x] == to) return true;
    }
    return false;
  }
};

// m in 0..max_value, adaptive Elias-gamma (the length in unary, then the mantissa). False when
// a damaged stream decodes to more than max_value.
template <class Coder>
bool code_integer(Coder& rc, Prob* length_probs, Prob (*mantissa)[2], uint32_t max_value,
                  uint32_t* value) {
  const int max_bits = ilog2(max_value + 1) + 1;
  const uint32_t v = *value + 1;
  const int want_bits = ilog2(v) + 1;
  int bits = 1;
  while (bits < max_bits && rc.bit(length_probs[bits - 1], bits < want_bits)) ++bits;
  uint32_t result = 1;
  for (int i = bits - 2; i >= 0; --i) {
    const int bit = rc.bit(mantissa[bits][i == bits - 2 ? 0 : 1], (v >> i) & 1);
    result = (result << 1) | static_cast<uint32_t>(bit);
  }
  if (result - 1 > max_value) return false;
  *value = result - 1;
  return true;
}

template <class Coder>
int code_class(Coder& rc, Model& model, int context_class, int value) {
  Prob* node = &model.tree[static_cast<size_t>(context_class) << model.class_bits];
  int index = 1;
  for (int i = model.class_bits - 1; i >= 0; --i)
    index = (index << 1) | rc.bit(node[index], (value >> i) & 1);
  return index - (1 << model.class_bits);
}

// The candidates in turn (skipping repeats and `exclude`), then the class itself.
template <bool kEncode, class Coder>
int code_candidates(Coder& rc, Model& model, Prob* probs, const int (&candidates)[kCandidates],
                    int exclude, int actual, int context_class, const Lossy* lossy,
                    size_t index) {
  for (int i = 0; i < kCandidates; ++i) {
    const int candidate = candidates[i];
    if (candidate == exclude) continue;
    bool seen = false;
    for (int j = 0; j < i; ++j) seen |= candidates[j] == candidate;
    if (seen) continue;
    if constexpr (kEncode) {
      if (lossy && actual != candidate && probs[i].p >= lossy->confident &&
          lossy->may(index, candidate))
        actual = candidate;
    }
    if (rc.bit(probs[i], actual == candidate)) return candidate;
  }
  return code_class(rc, model, context_class, actual);
}

// Where each row's class changes and how far each change moved from the row above; the guess
// for the next row is the same move again (smooth boundaries).
class Transitions {
 public:
  // The guessed position, in the row being coded, of the above row's change nearest to x.
  int guess(int x) {
    const int count = static_cast<int>(prev_pos_.size());
    if (count == 0) return kNoGuess;
    while (cursor_ + 1 < count && std::abs(prev_pos_[cursor_ + 1] - x) <= std::abs(prev_pos_[cursor_] - x))
      ++cursor_;
    while (cursor_ > 0 && std::abs(prev_pos_[cursor_ - 1] - x) < std::abs(prev_pos_[cursor_] - x))
      --cursor_;
    const int shift = prev_shift_[cursor_];
    return shift == kNoGuess ? kNoGuess : prev_pos_[cursor_] + shift;
  }
  void row_done(const uint8_t* row, int width) {
    pos_.clear();
    shift_.clear();
    key_.clear();
    size_t first = 0;
    for (int p = 1; p < width; ++p) {
      p = first_difference(row + 1, row, 0, p - 1, width - 1) + 1;  // the next class change
      if (p >= width) break;
      const int key = row[p - 1] << 8 | row[p];
      while (first < prev_pos_.size() && prev_pos_[first] < p - kMaxShift) ++first;
      int best = kNoGuess;
      for (size_t k = first; k < prev_pos_.size() && prev_pos_[k] <= p + kMaxShift; ++k) {
        if (prev_key_[k] == key && (best == kNoGuess || std::abs(p - prev_pos_[k]) < std::abs(best)))
          best = p - prev_pos_[k];
      }
      pos_.push_back(p);
      shift_.push_back(best);
      key_.push_back(key);
    }
    prev_pos_.swap(pos_);
    prev_shift_.swap(shift_);
    prev_key_.swap(key_);
    cursor_ = 0;
  }

 private:
  std::vector<int> prev_pos_, prev_shift_, prev_key_;
  std::vector<int> pos_, shift_, key_;
  int cursor_ = 0;
};

// Codes the width x height mask in raster order: encoding reads it (and, when lossy, writes
// what the decoder will see), decoding writes it. `pred`: the prediction both ends hold, or
// nullptr; `ref`: the reference both ends hold, or nullptr (not both). Returns false on a
// damaged stream.
template <bool kEncode, class Coder>
bool code_mask(Coder& rc, Model& model, uint8_t* mask, const uint8_t* pred, const uint8_t* ref,
               int width, int height, const Lossy* lossy) {
  const int max_class = (1 << model.class_bits) - 1;
  Transitions transitions;
  for (int r = 0; r < height; ++r) {
    uint8_t* row = mask + static_cast<size_t>(r) * width;
    const uint8_t* up = r > 0 ? row - width : nullptr;
    const uint8_t* up2 = r > 1 ? row - 2 * width : up;
    const uint8_t* prow = pred ? pred + static_cast<size_t>(r) * width : nullptr;
    const uint8_t* pup = (pred && r > 0) ? prow - width : nullptr;
    const uint8_t* rrow = ref ? ref + static_cast<size_t>(r) * width : nullptr;
    const size_t row_index = static_cast<size_t>(r) * width;
    const int first_row = r == 0;
    int last_broke = 0;
    int c = 0;
    while (c < width) {
      const int n = up ? up[c] : (c > 0 ? row[c - 1] : 0);
      const int w = c > 0 ? row[c - 1] : n;
      const int nw = (up && c > 0) ? up[c - 1] : n;
      const int ne = (up && c + 1 < width) ? up[c + 1] : n;
      const int p = prow ? prow[c] : w;

      if (prow && (c == 0 || row[c - 1] == prow[c - 1]) &&
          (!up || (up[c] == pup[c] && (c == 0 || up[c - 1] == pup[c - 1]) &&
                   (c + 1 >= width || up[c + 1] == pup[c + 1])))) {
        // the neighbours follow the prediction: how far does the row above keep doing so?
        int run = width - c;
        if (up) {  // up to the pixel before the row above's next departure from the prediction
          const int departs = first_difference(up, pup, 0, std::min(c + 2, width), width);
          run = departs == width ? width - c : departs - 1 - c;
        }
        int brk = run;
        if constexpr (kEncode) {
          brk = first_difference(row, prow, 0, c, c + run) - c;
          if (lossy && brk < run) {
            int k = brk;
            while (k < run && (row[c + k] == prow[c + k] || lossy->may(row_index + c + k, prow[c + k])))
              ++k;
            if (k == run) brk = run;
          }
        }
        const int bucket = std::min(ilog2(static_cast<uint32_t>(run)), kMaxLogRun);
        if (rc.bit(model.follow_whole[bucket][last_broke], brk == run)) {
          std::memcpy(row + c, prow + c, static_cast<size_t>(run));
          c += run;
          last_broke = 0;
          continue;
        }
        uint32_t at = static_cast<uint32_t>(brk);
        if (!code_integer(rc, model.follow_length[bucket], model.follow_mantissa,
                          static_cast<uint32_t>(run - 1), &at))
          return false;
        brk = static_cast<int>(at);
        std::memcpy(row + c, prow + c, static_cast<size_t>(brk));
        c += brk;
        // the pixel that leaves the prediction: any class but the predicted one
        const int bw = c > 0 ? row[c - 1] : (up ? up[c] : 0);
        const int bn = up ? up[c] : bw;
        const int bnw = (up && c > 0) ? up[c - 1] : bn;
        const int bne = (up && c + 1 < width) ? up[c + 1] : bn;
        const int candidates[kCandidates] = {bw, bn, bne, bnw, bw};
        const int value = code_candidates<kEncode>(rc, model, model.leave, candidates, prow[c],
                                                   kEncode ? row[c] : 0, prow[c], nullptr, 0);
        if (value > max_class || value == prow[c]) return false;
        row[c] = static_cast<uint8_t>(value);
        last_broke = 1;
        ++c;
        continue;
      }

      if (w == n && n == nw && n == ne) {
        // flat: how far does the row above stay this class?
        int run = width - c;
        if (up) {  // up to the pixel before the row above's next change (c + 1 is w: flat)
          const int change = first_difference(up, nullptr, static_cast<uint8_t>(w), c + 2, width);
          run = change == width ? width - c : change - 1 - c;
        }
        int brk = run;  // the first pixel of another class (run: none)
        const int end_guess = c + run < width ? transitions.guess(c + run) : kNoGuess;
        const int guess_at = end_guess == kNoGuess ? kNoGuess : end_guess - c;
        const int guess_kind = guess_at == kNoGuess ? 0 : (guess_at >= 0 && guess_at < run) ? 2 : 1;
        // the reference in the stretch: 0 all W, 1 it changes at ref_at, 2 not W where it starts
        int ref_kind = 0, ref_at = kNoGuess;
        if (rrow) {
          if (rrow[c] != w) {
            ref_kind = 2;
          } else {
            const int d = first_difference(rrow, nullptr, static_cast<uint8_t>(w), c, c + run) - c;
            if (d < run) ref_kind = 1, ref_at = d;
          }
        }
        if constexpr (kEncode) {
          brk = first_difference(row, nullptr, static_cast<uint8_t>(w), c, c + run) - c;
          if (lossy && brk < run) {
            int k = brk;
            while (k < run && (row[c + k] == w || lossy->may(row_index + c + k, w))) ++k;
            const int target = ref_kind == 1 ? ref_at : guess_kind == 2 ? guess_at : kNoGuess;
            if (k == run) {
              brk = run;
            } else if (target != kNoGuess && target != brk) {
              // move the break to the reference's or the guess when every pixel in between
              // may follow
              bool ok = true;
              if (target > brk) {
                for (int j = brk; j < target && ok; ++j)
                  ok = row[c + j] == w || lossy->may(row_index + c + j, w);
              } else {
                const int arriving = row[c + brk];
                for (int j = target; j < brk && ok; ++j) ok = lossy->may(row_index + c + j, arriving);
                if (ok) std::memset(row + c + target, arriving, static_cast<size_t>(brk - target));
              }
              if (ok) brk = target;
            }
          }
        }
        const int bucket = std::min(ilog2(static_cast<uint32_t>(run)), kMaxLogRun);
        Prob& whole = rrow ? model.ref_run_whole[first_row][bucket][last_broke][guess_kind][ref_kind]
                           : model.run_whole[first_row][bucket][last_broke][guess_kind];
        if (rc.bit(whole, brk == run)) {
          std::memset(row + c, w, static_cast<size_t>(run));
          c += run;
          last_broke = 0;
          continue;
        }
        if (ref_kind == 1 && rc.bit(model.break_at_ref[guess_at == ref_at], brk == ref_at)) {
          brk = ref_at;
        } else if (guess_kind == 2 && rc.bit(model.break_at_guess, brk == guess_at)) {
          brk = guess_at;
        } else {
          uint32_t from_end = static_cast<uint32_t>(run - 1 - brk);
          if (!code_integer(rc, model.break_length[guess_kind == 2][bucket], model.break_mantissa,
                            static_cast<uint32_t>(run - 1), &from_end))
            return false;
          brk = run - 1 - static_cast<int>(from_end);
        }
        std::memset(row + c, w, static_cast<size_t>(brk));
        const int stretch_end = c + run;
        c += brk;
        // the class arriving: most likely the one that follows the stretch in the row above
        const int above = up && stretch_end < width ? up[std::min(stretch_end + 1, width - 1)] : w;
        const int from_ref = rrow ? rrow[c] : w;
        int value;
        if (from_ref != w &&
            rc.bit(model.break_class_ref[ref_at == brk], kEncode && row[c] == from_ref))
          value = from_ref;
        else if (above != w && above != from_ref &&
                 rc.bit(model.break_class_above[guess_kind], kEncode && row[c] == above))
          value = above;
        else
          value = code_class(rc, model, w, kEncode ? row[c] : 0);
        if (value > max_class) return false;
        row[c] = static_cast<uint8_t>(value);
        last_broke = 1;
        ++c;
        continue;
      }

      // near a boundary
      const int ww = c > 1 ? row[c - 2] : w;
      const int nn = up2 ? up2[c] : n;
      const int nee = (up && c + 2 < width) ? up[c + 2] : ne;
      int pattern = (w == n) | (w == nw) << 1 | (w == ne) << 2 | (n == nw) << 3 |
                    (n == ne) << 4 | (nw == ne) << 5;
      pattern = pattern << 3 | (ww == w) | (nn == n) << 1 | (nee == ne) << 2;
      const int prediction_kind =
          !prow ? 0 : p == w ? 0 : p == n ? 1 : p == ne ? 2 : p == nw ? 3 : 4;
      const int g = transitions.guess(c);
      const int guess_kind = g == kNoGuess ? 0 : 3 + std::clamp(c - g, -2, 2);
      Prob* probs;
      int candidates[kCandidates];
      if (rrow) {  // the reference's pixel first, in the context of how it relates
        const int rp = rrow[c];
        bool uniform = true;
        for (int y = std::max(0, r - 1); y <= std::min(height - 1, r + 1) && uniform; ++y) {
          const uint8_t* rr = ref + static_cast<size_t>(y) * width;
          for (int x = std::max(0, c - 1); x <= std::min(width - 1, c + 1); ++x)
            uniform &= rr[x] == rp;
        }
        const int relation = rp == w ? 0 : rp == n ? 1 : rp == ne ? 2 : rp == nw ? 3 : 4;
        const int ref_kind = relation * 2 + uniform;
        // the neighbours' equality pattern without WW, NN, NNE: fewer contexts learn faster
        probs = &model.ref_boundary[static_cast<size_t>(
            (((pattern >> 3) * kRefKinds + ref_kind) * kGuessKinds + guess_kind) * kCandidates)];
        candidates[0] = rp, candidates[1] = w, candidates[2] = n, candidates[3] = ne,
        candidates[4] = nw;
      } else {
        probs = model.boundary[(pattern * kPredictionKinds + prediction_kind) * kGuessKinds +
                               guess_kind];
        candidates[0] = w, candidates[1] = n, candidates[2] = ne, candidates[3] = nw,
        candidates[4] = p;
      }
      const int value = code_candidates<kEncode>(rc, model, probs, candidates, -1,
                                                 kEncode ? row[c] : 0, w, lossy, row_index + c);
      if (value > max_class) return false;
      row[c] = static_cast<uint8_t>(value);
      ++c;
    }
    transitions.row_done(row, width);
  }
  return true;
}

// --- resampling -----------------------------------------------------------------------------

// Each low-res cell takes the class that covers most of its footprint in the full mask.
void downsample_mode(const uint8_t* mask, int width, int height, uint8_t* low, int low_width,
                     int low_height) {
  std::vector<uint32_t> counts(256);
  for (int j = 0; j < low_height; ++j) {
    const int y0 = static_cast<int>(static_cast<int64_t>(j) * height / low_height);
    const int y1 = std::max(y0 + 1, static_cast<int>(static_cast<int64_t>(j + 1) * height / low_height));
    for (int i = 0; i < low_width; ++i) {
      const int x0 = static_cast<int>(static_cast<int64_t>(i) * width / low_width);
      const int x1 = std::max(x0 + 1, static_cast<int>(static_cast<int64_t>(i + 1) * width / low_width));
      int best = mask[static_cast<size_t>(y0) * width + x0];
      uint32_t best_count = 0;
      for (int y = y0; y < y1; ++y) {
        const uint8_t* src = mask + static_cast<size_t>(y) * width;
        for (int x = x0; x < x1; ++x) {
          const uint32_t count = ++counts[src[x]];
          if (count > best_count) {
            best_count = count;
            best = src[x];
          }
        }
      }
      for (int y = y0; y < y1; ++y) {
        const uint8_t* src = mask + static_cast<size_t>(y) * width;
        for (int x = x0; x < x1; ++x) counts[src[x]] = 0;
      }
      low[static_cast<size_t>(j) * low_width + i] = static_cast<uint8_t>(best);
    }
  }
}

// Each full-res pixel takes the class with the most weight among its four nearest low-res
// cells: bilinear weights, times (guided) how close the pixel's colour is to the cell's mean
// colour in the guide, exp(-d^2 / (2 sigma^2)).
void upsample_labels(const uint8_t* low, int low_width, int low_height, uint8_t* out, int width,
                     int height, const uint8_t* guide, double sigma) {
  constexpr size_t kRangeSteps = 3 * 255 * 255 / 64 + 2;  // squared colour distance / 64
  std::vector<float> cell_colour;
  std::vector<float> range_table(kRangeSteps);
  if (guide) {
    cell_colour.assign(static_cast<size_t>(low_width) * low_height * 3, 0.0f);
    std::vector<uint32_t> cell_pixels(static_cast<size_t>(low_width) * low_height, 0);
    for (int y = 0; y < height; ++y) {
      const int j = std::min(low_height - 1, static_cast<int>(static_cast<int64_t>(y) * low_height / height));
      for (int x = 0; x < width; ++x) {
        const int i = std::min(low_width - 1, static_cast<int>(static_cast<int64_t>(x) * low_width / width));
        const size_t cell = static_cast<size_t>(j) * low_width + i;
        const uint8_t* rgb = guide + (static_cast<size_t>(y) * width + x) * 3;
        for (int k = 0; k < 3; ++k) cell_colour[cell * 3 + k] += rgb[k];
        ++cell_pixels[cell];
      }
    }
    for (size_t cell = 0; cell < cell_pixels.size(); ++cell)
      for (int k = 0; k < 3; ++k) cell_colour[cell * 3 + k] /= std::max<uint32_t>(1, cell_pixels[cell]);
    for (size_t d = 0; d < kRangeSteps; ++d)
      range_table[d] = static_cast<float>(std::exp(-(64.0 * d) / (2.0 * sigma * sigma))) + 1e-4f;
  }
  // per column and row: the two nearest cells and the weight of the second
  std::vector<int> i0(width), i1(width), j0(height), j1(height);
  std::vector<float> fx(width), fy(height);
  const auto axis = [](int size, int low_size, std::vector<int>& a, std::vector<int>& b,
                       std::vector<float>& f) {
    const double scale = static_cast<double>(low_size) / size;
    for (int k = 0; k < size; ++k) {
      const double at = std::clamp((k + 0.5) * scale - 0.5, 0.0, low_size - 1.0);
      a[k] = std::min(static_cast<int>(at), low_size - 1);
      b[k] = std::min(a[k] + 1, low_size - 1);
      f[k] = static_cast<float>(at - a[k]);
    }
  };
  axis(width, low_width, i0, i1, fx);
  axis(height, low_height, j0, j1, fy);
  for (int y = 0; y < height; ++y) {
    const uint8_t* top = low + static_cast<size_t>(j0[y]) * low_width;
    const uint8_t* bottom = low + static_cast<size_t>(j1[y]) * low_width;
    uint8_t* dst = out + static_cast<size_t>(y) * width;
    for (int x = 0; x < width; ++x) {
      const int labels[4] = {top[i0[x]], top[i1[x]], bottom[i0[x]], bottom[i1[x]]};
      if (labels[0] == labels[1] && labels[0] == labels[2] && labels[0] == labels[3]) {
        dst[x] = static_cast<uint8_t>(labels[0]);
        continue;
      }
      const float wx = fx[x], wy = fy[y];
      float weights[4] = {(1 - wx) * (1 - wy), wx * (1 - wy), (1 - wx) * wy, wx * wy};
      if (guide) {
        const size_t cells[4] = {static_cast<size_t>(j0[y]) * low_width + i0[x],
                                 static_cast<size_t>(j0[y]) * low_width + i1[x],
                                 static_cast<size_t>(j1[y]) * low_width + i0[x],
                                 static_cast<size_t>(j1[y]) * low_width + i1[x]};
        const uint8_t* rgb = guide + (static_cast<size_t>(y) * width + x) * 3;
        for (int k = 0; k < 4; ++k) {
          float d2 = 0;
          for (int ch = 0; ch < 3; ++ch) {
            const float d = rgb[ch] - cell_colour[cells[k] * 3 + ch];
            d2 += d * d;
          }
          weights[k] *= range_table[std::min<size_t>(static_cast<size_t>(d2 / 64), kRangeSteps - 1)];
        }
      }
      int best = labels[0];
      float best_weight = -1;
      for (int k = 0; k < 4; ++k) {
        float total = 0;
        for (int m = 0; m < 4; ++m)
          if (labels[m] == labels[k]) total += weights[m];
        if (total > best_weight) {
          best_weight = total;
          best = labels[k];
        }
      }
      dst[x] = static_cast<uint8_t>(best);
    }
  }
}

// --- Python ---------------------------------------------------------------------------------

class Buffer {
 public:
  ~Buffer() {
    if (held_) PyBuffer_Release(&view_);
  }
  // A C-contiguous buffer of `size` bytes (any size when size < 0).
  bool get(PyObject* object, const char* name, Py_ssize_t size) {
    if (PyObject_GetBuffer(object, &view_, PyBUF_C_CONTIGUOUS) != 0) return false;
    held_ = true;
    if (size >= 0 && view_.len != size) {
      PyErr_Format(PyExc_ValueError, "%s: %zd bytes, expected %zd", name, view_.len, size);
      return false;
    }
    return true;
  }
  const uint8_t* bytes() const { return held_ ? static_cast<const uint8_t*>(view_.buf) : nullptr; }
  Py_ssize_t size() const { return view_.len; }

 private:
  Py_buffer view_{};
  bool held_ = false;
};

bool valid_size(int width, int height) {
  if (width >= 1 && height >= 1 && width <= 16384 && height <= 16384) return true;
  PyErr_Format(PyExc_ValueError, "a %dx%d mask is outside 1..16384 pixels a side", width, height);
  return false;
}

PyObject* encode(PyObject*, PyObject* args) {
  PyObject *mask_object, *pred_object, *ref_object = Py_None;
  int width, height, tolerance;
  unsigned long long movable;
  double confident;
  if (!PyArg_ParseTuple(args, "OiiOiKd|O", &mask_object, &width, &height, &pred_object,
                        &tolerance, &movable, &confident, &ref_object))
    return nullptr;
  if (!valid_size(width, height)) return nullptr;
  const Py_ssize_t size = static_cast<Py_ssize_t>(width) * height;
  Buffer mask, pred, ref;
  if (!mask.get(mask_object, "mask", size)) return nullptr;
  if (pred_object != Py_None && !pred.get(pred_object, "prediction", size)) return nullptr;
  if (ref_object != Py_None && !ref.get(ref_object, "reference", size)) return nullptr;
  if (pred.bytes() && ref.bytes())
    return PyErr_Format(PyExc_ValueError, "a prediction or a reference, not both");
  PyObject* coded = PyBytes_FromStringAndSize(reinterpret_cast<const char*>(mask.bytes()), size);
  if (!coded) return nullptr;
  uint8_t* decoded_view = reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(coded));
  std::vector<uint8_t> stream;
  int class_bits = 1;
  bool out_of_memory = false;
  Py_BEGIN_ALLOW_THREADS;
  try {
    int top = 0;
    for (Py_ssize_t i = 0; i < size; ++i) top = std::max<int>(top, mask.bytes()[i]);
    class_bits = ilog2(static_cast<uint32_t>(top)) + 1;
    auto model = std::make_unique<Model>(class_bits);  // ~0.4 MB: not on the stack
    if (ref.bytes()) model->use_reference();
    RangeEncoder rc;
    const Lossy lossy{mask.bytes(), width, height, tolerance, movable,
                      static_cast<uint16_t>(std::clamp(confident, 0.0, 1.0) * 65535)};
    code_mask<true>(rc, *model, decoded_view, pred.bytes(), ref.bytes(), width, height,
                    tolerance > 0 && movable ? &lossy : nullptr);
    stream = rc.finish();
  } catch (const std::bad_alloc&) {
    out_of_memory = true;
  }
  Py_END_ALLOW_THREADS;
  if (out_of_memory) {
    Py_DECREF(coded);
    return PyErr_NoMemory();
  }
  // the class bits, then the range-coded stream
  PyObject* data = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(stream.size() + 1));
  if (!data) {
    Py_DECREF(coded);
    return nullptr;
  }
  PyBytes_AS_STRING(data)[0] = static_cast<char>(class_bits);
  std::memcpy(PyBytes_AS_STRING(data) + 1, stream.data(), stream.size());
  return Py_BuildValue("NN", data, coded);
}

PyObject* decode(PyObject*, PyObject* args) {
  PyObject *data_object, *pred_object, *ref_object = Py_None;
  int width, height;
  if (!PyArg_ParseTuple(args, "OiiO|O", &data_object, &width, &height, &pred_object, &ref_object))
    return nullptr;
  if (!valid_size(width, height)) return nullptr;
  const Py_ssize_t size = static_cast<Py_ssize_t>(width) * height;
  Buffer data, pred, ref;
  if (!data.get(data_object, "data", -1)) return nullptr;
  if (pred_object != Py_None && !pred.get(pred_object, "prediction", size)) return nullptr;
  if (ref_object != Py_None && !ref.get(ref_object, "reference", size)) return nullptr;
  if (pred.bytes() && ref.bytes())
    return PyErr_Format(PyExc_ValueError, "a prediction or a reference, not both");
  if (data.size() < 1) return PyErr_Format(PyExc_ValueError, "no coded mask");
  const int class_bits = data.bytes()[0];
  if (class_bits < 1 || class_bits > 8)
    return PyErr_Format(PyExc_ValueError, "class bits %d outside 1..8", class_bits);
  PyObject* result = PyBytes_FromStringAndSize(nullptr, size);
  if (!result) return nullptr;
  uint8_t* mask = reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(result));
  bool ok = false;
  size_t overrun = 0;
  bool out_of_memory = false;
  Py_BEGIN_ALLOW_THREADS;
  try {
    auto model = std::make_unique<Model>(class_bits);  // ~0.4 MB: not on the stack
    if (ref.bytes()) model->use_reference();
    RangeDecoder rc(data.bytes() + 1, static_cast<size_t>(data.size() - 1));
    ok = code_mask<false>(rc, *model, mask, pred.bytes(), ref.bytes(), width, height, nullptr);
    overrun = rc.overrun();
  } catch (const std::bad_alloc&) {
    out_of_memory = true;
  }
  Py_END_ALLOW_THREADS;
  if (out_of_memory) {
    Py_DECREF(result);
    return PyErr_NoMemory();
  }
  if (!ok || overrun > 4) {
    Py_DECREF(result);
    return PyErr_Format(PyExc_ValueError, "the coded mask is damaged (%s)",
                        ok ? "it ends early" : "an impossible symbol");
  }
  return result;
}

PyObject* downsample(PyObject*, PyObject* args) {
  PyObject* mask_object;
  int width, height, low_width, low_height;
  if (!PyArg_ParseTuple(args, "Oiiii", &mask_object, &width, &height, &low_width, &low_height))
    return nullptr;
  if (!valid_size(width, height) || !valid_size(low_width, low_height)) return nullptr;
  if (low_width > width || low_height > height)
    return PyErr_Format(PyExc_ValueError, "%dx%d is not smaller than %dx%d", low_width,
                        low_height, width, height);
  Buffer mask;
  if (!mask.get(mask_object, "mask", static_cast<Py_ssize_t>(width) * height)) return nullptr;
  PyObject* result = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(low_width) * low_height);
  if (!result) return nullptr;
  uint8_t* low = reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(result));
  bool out_of_memory = false;
  Py_BEGIN_ALLOW_THREADS;
  try {
    downsample_mode(mask.bytes(), width, height, low, low_width, low_height);
  } catch (const std::bad_alloc&) {
    out_of_memory = true;
  }
  Py_END_ALLOW_THREADS;
  if (out_of_memory) {
    Py_DECREF(result);
    return PyErr_NoMemory();
  }
  return result;
}

PyObject* upsample(PyObject*, PyObject* args) {
  PyObject *low_object, *guide_object;
  int low_width, low_height, width, height;
  double sigma;
  if (!PyArg_ParseTuple(args, "OiiiiOd", &low_object, &low_width, &low_height, &width, &height,
                        &guide_object, &sigma))
    return nullptr;
  if (!valid_size(width, height) || !valid_size(low_width, low_height)) return nullptr;
  if (low_width > width || low_height > height)
    return PyErr_Format(PyExc_ValueError, "%dx%d is not smaller than %dx%d", low_width,
                        low_height, width, height);
  if (!(sigma > 0)) return PyErr_Format(PyExc_ValueError, "sigma must be positive");
  Buffer low, guide;
  if (!low.get(low_object, "low", static_cast<Py_ssize_t>(low_width) * low_height)) return nullptr;
  if (guide_object != Py_None &&
      !guide.get(guide_object, "guide", static_cast<Py_ssize_t>(width) * height * 3))
    return nullptr;
  PyObject* result = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(width) * height);
  if (!result) return nullptr;
  uint8_t* out = reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(result));
  bool out_of_memory = false;
  Py_BEGIN_ALLOW_THREADS;
  try {
    upsample_labels(low.bytes(), low_width, low_height, out, width, height, guide.bytes(), sigma);
  } catch (const std::bad_alloc&) {
    out_of_memory = true;
  }
  Py_END_ALLOW_THREADS;
  if (out_of_memory) {
    Py_DECREF(result);
    return PyErr_NoMemory();
  }
  return result;
}

PyMethodDef kMethods[] = {
    {"encode", encode, METH_VARARGS,
     "encode(mask, width, height, prediction, tolerance, movable, confident, reference=None) "
     "-> (data, decoded): the coded mask and what the decoder will make of it. prediction: "
     "None or a mask of the same size both ends hold, followed where it can be; reference: "
     "None or a mask of the same size both ends hold, used as context (not with a "
     "prediction); tolerance 0 = lossless, else how far (px) a boundary may move between the "
     "classes whose bits are set in `movable` when the model gives the other class at least "
     "`confident` (or the reference has it there)."},
    {"decode", decode, METH_VARARGS,
     "decode(data, width, height, prediction, reference=None) -> bytes: the width x height "
     "class ids; ValueError when the data is damaged."},
    {"downsample", downsample, METH_VARARGS,
     "downsample(mask, width, height, low_width, low_height) -> bytes: each cell's majority "
     "class."},
    {"upsample", upsample, METH_VARARGS,
     "upsample(low, low_width, low_height, width, height, guide, sigma) -> bytes: each pixel "
     "the class with the most bilinear weight among its four nearest cells (guide: None or "
     "HxWx3 uint8 whose colours weight the cells, exp(-d^2/(2 sigma^2)))."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT,
                       "_mask_coder",
                       "Context-modelled arithmetic coding and resampling of class-id masks.",
                       -1,
                       kMethods,
                       nullptr,
                       nullptr,
                       nullptr,
                       nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__mask_coder() { return PyModule_Create(&kModule); }
