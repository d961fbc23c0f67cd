// FloatBuffer: an owned, zero-initialised flat float32 buffer (parameters, gradients,
// moments, tree partials). Freed with its owner; never reallocated.

public final class FloatBuffer {
    public let pointer: UnsafeMutableBufferPointer<Float>
    /// What owns memory this buffer does not (shared memory), kept alive with it.
    private let owner: AnyObject?

    public init(count: Int) {
        pointer = .allocate(capacity: count)
        pointer.initialize(repeating: 0)
        owner = nil
    }

    /// A buffer over `memory`, which `owner` frees; zeroed.
    public init(in memory: UnsafeMutableBufferPointer<Float>, ownedBy owner: AnyObject) {
        pointer = memory
        pointer.update(repeating: 0)
        self.owner = owner
    }

    public convenience init(_ values: [Float]) {
        self.init(count: values.count)
        _ = pointer.initialize(from: values)
    }

    deinit { if owner == nil { pointer.deallocate() } }

    public var count: Int { pointer.count }
    public var base: UnsafeMutablePointer<Float> { pointer.baseAddress! }
    public var array: [Float] { Array(pointer) }

    public func zero() { pointer.update(repeating: 0) }

    /// self[i] += other[i].
    public func add(_ other: UnsafePointer<Float>) { addInPlace(base, other, count: count) }
}

/// destination[i] += source[i] for i in 0..<count.
public func addInPlace(_ destination: UnsafeMutablePointer<Float>, _ source: UnsafePointer<Float>, count: Int) {
    forEachChunk(count) { i, w in store(load(destination + i, w) + load(source + i, w), destination + i, w) }
}

/// FNV-1a over the float bit patterns, folded in order: one flipped bit changes it.
public func contentChecksum(_ values: UnsafeBufferPointer<Float>, seed: UInt64 = 0xcbf2_9ce4_8422_2325) -> UInt64 {
    var hash = seed
    for v in values { hash = (hash ^ UInt64(v.bitPattern)) &* 0x100_0000_01b3 }
    return hash
}
