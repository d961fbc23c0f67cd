// Data: SPEC's byte-level split, the seeded global batch sampler, rank sharding and the
// fixed validation set. Pure functions of their inputs; no file I/O.

public struct DataError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Text bytes split per SPEC: the first ⌊0.9·N⌋ bytes train, the rest validate.
public struct TextSplit: Sendable {
    public let train: [UInt8], validation: [UInt8]

    public init(bytes: [UInt8]) {
        let n = Int(0.9 * Double(bytes.count))
        train = Array(bytes[..<n])
        validation = Array(bytes[n...])
    }

    /// Throws unless both splits hold at least seqLen + 1 tokens.
    public func check(seqLen: Int, source: String) throws {
        for (name, part) in [("training", train), ("validation", validation)] where part.count < seqLen + 1 {
            throw DataError("\(source): the \(name) split has \(part.count) bytes but needs at least seq-len + 1 = \(seqLen + 1); use a longer text (≥ \((seqLen + 1) * 10) bytes) or a smaller --seq-len")
        }
    }
}

/// The global batch's start offsets, drawn from one generator that every rank runs identically.
public struct BatchSampler: Sendable, Equatable {
    public var rng: Xoshiro256
    public let batch: Int, seqLen: Int, dataCount: Int

    public init(seed: UInt64, batch: Int, seqLen: Int, dataCount: Int) {
        rng = Xoshiro256(seed: seed)
        self.batch = batch; self.seqLen = seqLen; self.dataCount = dataCount
    }

    /// Offsets of the next global batch, each in 0..<(dataCount − seqLen).
    public mutating func next(into offsets: inout [Int]) {
        precondition(offsets.count == batch)
        for i in 0..<batch { offsets[i] = rng.nextBelow(dataCount - seqLen) }
    }
}

/// The sequences rank r of W owns: r·B/W ..< (r+1)·B/W.
public func shard(batch: Int, rank: Int, worldSize: Int) -> Range<Int> {
    let per = batch / worldSize
    return (rank * per)..<((rank + 1) * per)
}

/// SPEC's validation offsets: floor(k·(n_val − T − 1)/(N − 1)) for k in 0..<N.
public func validationOffsets(validationCount: Int, seqLen: Int, count: Int) -> [Int] {
    let span = validationCount - seqLen - 1
    if count == 1 { return [0] }
    return (0..<count).map { k in k * span / (count - 1) }
}

/// Writes sequence `row` of a batch: tokens = data[o..<o+T], targets = data[o+1...o+T].
@inline(__always)
public func fillSequence(tokens: UnsafeMutableBufferPointer<Int32>, targets: UnsafeMutableBufferPointer<Int32>,
                         row: Int, from data: UnsafeBufferPointer<UInt8>, offset: Int, seqLen T: Int) {
    for t in 0..<T {
        tokens[row * T + t] = Int32(data[offset + t])
        targets[row * T + t] = Int32(data[offset + t + 1])
    }
}
