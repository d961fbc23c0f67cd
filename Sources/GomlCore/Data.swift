// Data: docs/model.md's byte-level split, the seeded global batch sampler, rank sharding and the
// fixed validation set, over a read-only byte source made of pieces (files mapped by GomlIO,
// concatenated). Pure functions of their inputs; no file I/O.

public struct DataError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// What keeps a ByteSource's memory alive. A file mapping also takes pages out of this process
/// once they have been read (they stay in the page cache every rank shares), so a rank's
/// resident memory does not grow with the part of the corpus it has sampled.
public protocol ByteSourceOwner: AnyObject {
    /// Releases this process's mapping of the pages around `bytes`; the bytes stay readable.
    func releasePages(around bytes: UnsafeRawBufferPointer)
}

/// Read-only bytes held in pieces, addressed as their concatenation. A sequence may run from
/// one piece into the next: the corpus is one stream of bytes, as if the files were joined.
/// GomlCore never owns the memory: `owner` (a file mapping, or a copy) keeps it alive.
public struct ByteSource: @unchecked Sendable {
    /// The non-empty pieces, in order.
    public let pieces: [UnsafeBufferPointer<UInt8>]
    /// starts[i] is pieces[i]'s offset in the concatenation; starts[pieces.count] == count.
    private let starts: [Int]
    public let count: Int
    private let owner: ByteSourceOwner?

    public init(pieces: [UnsafeBufferPointer<UInt8>], owner: ByteSourceOwner?) {
        self.pieces = pieces.filter { $0.count > 0 }
        var starts = [0]
        for piece in self.pieces { starts.append(starts.last! + piece.count) }
        self.starts = starts
        count = starts.last!
        self.owner = owner
    }

    /// A source owning a copy of `bytes` (random bench text, tests).
    public init(copying bytes: [UInt8]) {
        let storage = ByteStorage(bytes)
        self.init(pieces: [UnsafeBufferPointer(storage.buffer)], owner: storage)
    }

    /// Bytes `range` of the concatenation, sharing this source's memory.
    public func slice(_ range: Range<Int>) -> ByteSource {
        precondition(range.lowerBound >= 0 && range.upperBound <= count)
        var parts: [UnsafeBufferPointer<UInt8>] = []
        for (i, piece) in pieces.enumerated() {
            let lower = max(range.lowerBound, starts[i]), upper = min(range.upperBound, starts[i + 1])
            if lower < upper { parts.append(UnsafeBufferPointer(rebasing: piece[(lower - starts[i])..<(upper - starts[i])])) }
        }
        return ByteSource(pieces: parts, owner: owner)
    }

    /// The concatenation as an array (tests and small texts only: it copies).
    public var bytes: [UInt8] { pieces.flatMap { Array($0) } }

    /// The piece holding global offset `offset` (binary search; allocates nothing).
    @inline(__always)
    func piece(containing offset: Int) -> Int {
        var low = 0, high = pieces.count - 1
        while low < high {
            let mid = (low + high + 1) / 2
            if starts[mid] <= offset { low = mid } else { high = mid - 1 }
        }
        return low
    }

    @inline(__always)
    func start(ofPiece i: Int) -> Int { starts[i] }

    /// Tells the owner that bytes offset..<offset+count have been read (allocates nothing).
    public func releasePages(offset: Int, count: Int) {
        guard let owner else { return }
        var piece = piece(containing: offset), position = offset
        let end = min(offset + count, self.count)
        while position < end {
            let upTo = min(end, starts[piece + 1])
            let raw = UnsafeRawBufferPointer(pieces[piece])
            owner.releasePages(around: UnsafeRawBufferPointer(rebasing: raw[(position - starts[piece])..<(upTo - starts[piece])]))
            position = upTo
            piece += 1
        }
    }
}

/// Owns the bytes of `ByteSource(copying:)`.
private final class ByteStorage: ByteSourceOwner {
    func releasePages(around bytes: UnsafeRawBufferPointer) {}

    let buffer: UnsafeMutableBufferPointer<UInt8>
    init(_ bytes: [UInt8]) {
        buffer = .allocate(capacity: max(1, bytes.count))
        _ = buffer.initialize(from: bytes)
        if bytes.isEmpty { buffer[0] = 0 }
    }
    deinit { buffer.deallocate() }
}

/// Training and validation bytes: docs/model.md's split of one corpus (the first ⌊0.9·N⌋ bytes train,
/// the rest validate), or a separate validation corpus.
public struct TextSplit: Sendable {
    public let train: ByteSource, validation: ByteSource
    /// How errors name each part.
    public let trainName: String, validationName: String

    public init(corpus: ByteSource, name: String = "the data") {
        let n = Int(0.9 * Double(corpus.count))
        train = corpus.slice(0..<n)
        validation = corpus.slice(n..<corpus.count)
        trainName = "\(name): the training split"
        validationName = "\(name): the validation split"
    }

    public init(train: ByteSource, trainName: String, validation: ByteSource, validationName: String) {
        self.train = train; self.validation = validation
        self.trainName = trainName; self.validationName = validationName
    }

    public init(bytes: [UInt8]) { self.init(corpus: ByteSource(copying: bytes)) }

    /// Throws unless both parts hold at least seqLen + 1 tokens.
    public func check(seqLen: Int) throws {
        for (name, part) in [(trainName, train), (validationName, validation)] where part.count < seqLen + 1 {
            throw DataError("\(name) has \(part.count) bytes but needs at least seq-len + 1 = \(seqLen + 1); use more text or a smaller --seq-len")
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

/// docs/model.md's validation offsets: floor(k·(n_val − T − 1)/(N − 1)) for k in 0..<N.
public func validationOffsets(validationCount: Int, seqLen: Int, count: Int) -> [Int] {
    let span = validationCount - seqLen - 1
    if count == 1 { return [0] }
    return (0..<count).map { k in k * span / (count - 1) }
}

/// Writes sequence `row` of a batch: tokens = data[o..<o+T], targets = data[o+1...o+T],
/// where data is the pieces' concatenation (a sequence may cross from one piece into the next).
@inline(__always)
public func fillSequence(tokens: UnsafeMutableBufferPointer<Int32>, targets: UnsafeMutableBufferPointer<Int32>,
                         row: Int, from data: ByteSource, offset: Int, seqLen T: Int) {
    var piece = data.piece(containing: offset)
    var bytes = data.pieces[piece]
    var local = offset - data.start(ofPiece: piece)
    if local + T < bytes.count {
        for t in 0..<T {
            tokens[row * T + t] = Int32(bytes[local + t])
            targets[row * T + t] = Int32(bytes[local + t + 1])
        }
        return
    }
    // Across a piece boundary: walk byte by byte.
    var previous = Int32(bytes[local])
    for t in 0..<T {
        local += 1
        if local == bytes.count { piece += 1; bytes = data.pieces[piece]; local = 0 }
        let next = Int32(bytes[local])
        tokens[row * T + t] = previous
        targets[row * T + t] = next
        previous = next
    }
}
