import CBFloat16

/// How one bucket's parameters travel when parts of them are bfloat16 values (their holders
/// round them so): each rank's slice, piece by piece in element order, bf16 pieces as one 16-bit
/// word per value and float32 pieces as two, so every rank knows every slice's place on the
/// wire. The wire is the bucket's gradient memory: dead from the update of the bucket's slice,
/// which starts the gather, until the next backward, which the forward's wait for the gather
/// precedes; so it costs no memory. At most as many bytes as the bucket's float32.
struct GatherWire {
    struct Piece { let elements: Range<Int>; let bf16: Bool; let word: Int }
    /// Per rank, its slice's pieces.
    let pieces: [[Piece]]
    let wire: UnsafeMutableRawPointer
    /// Bytes on the wire, all slices.
    let bytes: Int
    /// Per rank: its slice's 16-bit words on the wire, the slices in rank order.
    let words: [Int]

    init(_ bucket: ShardedBucket) {
        var pieces: [[Piece]] = [], words: [Int] = [], start = 0, position = 0
        for count in bucket.counts {
            let slice = start..<(start + count), first = position
            var mine: [Piece] = [], at = slice.lowerBound
            func add(_ elements: Range<Int>, bf16: Bool) {
                guard !elements.isEmpty else { return }
                mine.append(Piece(elements: elements, bf16: bf16, word: position))
                position += (bf16 ? 1 : 2) * elements.count
            }
            for range in bucket.bf16Ranges {
                let part = range.clamped(to: slice)
                guard !part.isEmpty else { continue }
                add(at..<part.lowerBound, bf16: false)
                add(part, bf16: true)
                at = part.upperBound
            }
            add(at..<slice.upperBound, bf16: false)
            words.append(position - first)
            pieces.append(mine)
            start += count
        }
        precondition(position * 2 <= bucket.gradient.count * 4)
        self.pieces = pieces
        wire = UnsafeMutableRawPointer(bucket.gradient.baseAddress!)
        bytes = position * 2
        self.words = words
    }

    /// Writes `rank`'s slice of `values` to its place on the wire, bf16 pieces rounded by
    /// goml_bf16_from_float, as CBF16 packs an operand.
    func encode(_ values: UnsafeMutableBufferPointer<Float>, rank: Int) {
        for piece in pieces[rank] {
            let at = wire + 2 * piece.word, source = values.baseAddress! + piece.elements.lowerBound, count = piece.elements.count
            guard piece.bf16 else { at.copyMemory(from: source, byteCount: 4 * count); continue }
            goml_bf16_encode(source, at.assumingMemoryBound(to: UInt16.self), count)
        }
    }

    /// Reads every slice but `rank`'s from the wire into `values`.
    func decode(into values: UnsafeMutableBufferPointer<Float>, except rank: Int) {
        for (r, slice) in pieces.enumerated() where r != rank {
            for piece in slice {
                let at = wire + 2 * piece.word, target = values.baseAddress! + piece.elements.lowerBound, count = piece.elements.count
                guard piece.bf16 else { UnsafeMutableRawPointer(target).copyMemory(from: at, byteCount: 4 * count); continue }
                goml_bf16_decode(at.assumingMemoryBound(to: UInt16.self), target, count)
            }
        }
    }
}
