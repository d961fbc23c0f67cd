// InProcessCommunicator: ranks as threads of one process (PyTorch's multi-threaded process
// group, for tests). It keeps MPICommunicator's contract: collectives match across ranks in
// the order each rank calls them, a request completes once every rank has started it (the last
// rank to start one does the arithmetic for all), a wait past the collective timeout ends the
// process naming the call, and bf16 elements are summed as MPI's bf16 operator sums them. Sums
// are added in rank order, so every run of the same ranks gives the same bits.

import CBFloat16
import Foundation

public final class InProcessCommunicator: Communicator {
    public let rank: Int
    public var size: Int { group.size }
    public var localRank: Int { group.localRank[rank] }
    public var localSize: Int { group.hostOfRank.filter { $0 == group.hostOfRank[rank] }.count }
    public var hostName: String { "host\(group.hostOfRank[rank])" }
    private let group: RankGroup
    /// Per channel: how many operations this rank has joined on it (the next one's number).
    private var joined: [Channel: Int] = [:]
    private let joinedLock = NSLock()
    private var step = 0

    /// Runs `body` on `ranks` threads, rank r with rank r's communicator, and returns their
    /// results in rank order. Hosts are simulated: `ranksPerHost` consecutive ranks share one.
    public static func run<T>(ranks: Int, ranksPerHost: Int? = nil, timeout: Double = 120,
                              _ body: @escaping (InProcessCommunicator) throws -> T) throws -> [T] {
        let perHost = ranksPerHost ?? ranks
        precondition(ranks > 0 && perHost > 0 && ranks % perHost == 0, "\(ranks) ranks do not split into hosts of \(perHost)")
        let group = RankGroup(hostOfRank: (0..<ranks).map { $0 / perHost }, timeout: timeout)
        let results = ResultSlots<T>(count: ranks)
        let finished = DispatchGroup()
        for r in 0..<ranks {
            finished.enter()
            let thread = Thread {
                results.set(r, Result(catching: { try body(InProcessCommunicator(rank: r, group: group)) }))
                finished.leave()
            }
            thread.stackSize = 16 << 20
            thread.start()
        }
        finished.wait()
        return try results.values()
    }

    private init(rank: Int, group: RankGroup) {
        self.rank = rank
        self.group = group
    }

    // MARK: Blocking collectives (one channel: every rank calls them in the same order)

    public func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) {
        blocking("allReduceSum", Part(buffer)) { parts in
            let sum = Self.sum(parts.map { $0.floats() }, count: buffer.count)
            for part in parts { _ = part.floats().update(fromContentsOf: sum) }
        }
    }

    public func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) {
        blocking("allReduceSum", Part(buffer)) { parts in
            var sum = [Double](repeating: 0, count: buffer.count)
            for part in parts { for (i, v) in part.doubles().enumerated() { sum[i] += v } }
            for part in parts { _ = part.doubles().update(fromContentsOf: sum) }
        }
    }

    public func allGather(_ send: UnsafeBufferPointer<Double>, into receive: UnsafeMutableBufferPointer<Double>) {
        precondition(receive.count == send.count * size)
        blocking("allGather", Part(UnsafeMutableBufferPointer(mutating: send), receive)) { parts in
            for target in parts {
                let out = target.doubles(output: true)
                for (r, source) in parts.enumerated() {
                    _ = UnsafeMutableBufferPointer(rebasing: out[(r * send.count)..<((r + 1) * send.count)]).update(fromContentsOf: source.doubles())
                }
            }
        }
    }

    public func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) {
        blocking("broadcast", Part(buffer)) { parts in
            let source = parts[root].bytes()
            for (r, part) in parts.enumerated() where r != root { part.bytes().copyMemory(from: UnsafeRawBufferPointer(source)) }
        }
    }

    public func exchange(_ outgoing: UnsafeBufferPointer<Float>, _ incoming: UnsafeMutableBufferPointer<Float>, with partner: Int) {
        let pair = Channel.exchange(min(rank, partner), max(rank, partner))
        let operation = join(pair, Part(UnsafeMutableBufferPointer(mutating: outgoing), incoming, value: rank), members: 2) { parts in
            for part in parts {
                let other = parts.first { $0.value != part.value }!
                _ = part.floats(output: true).update(fromContentsOf: other.floats())
            }
        }
        wait(for: operation, "exchange with rank \(partner)")
    }

    public func gather(_ send: UnsafeBufferPointer<Float>, into receive: UnsafeMutableBufferPointer<Float>, counts: [Int], root: Int) {
        blocking("gather", Part(UnsafeMutableBufferPointer(mutating: send), receive)) { parts in
            let out = parts[root].floats(output: true)
            var start = 0
            for (r, part) in parts.enumerated() {
                _ = UnsafeMutableBufferPointer(rebasing: out[start..<(start + counts[r])]).update(fromContentsOf: part.floats())
                start += counts[r]
            }
        }
    }

    public func scatter(_ send: UnsafeBufferPointer<Float>, counts: [Int], into receive: UnsafeMutableBufferPointer<Float>, root: Int) {
        blocking("scatter", Part(UnsafeMutableBufferPointer(mutating: send), receive)) { parts in
            let source = parts[root].floats()
            var start = 0
            for (r, part) in parts.enumerated() {
                _ = part.floats(output: true).update(fromContentsOf: UnsafeBufferPointer(rebasing: source[start..<(start + counts[r])]))
                start += counts[r]
            }
        }
    }

    public func split(color: Int) -> Communicator {
        let result = blockingValue("split", Part(value: color)) { (parts: [Part]) -> Any? in
            var groups: [Int: RankGroup] = [:]
            for color in Set(parts.map(\.value)) {
                let members = parts.indices.filter { parts[$0].value == color }
                groups[color] = RankGroup(hostOfRank: members.map { self.group.hostOfRank[$0] }, timeout: self.group.timeout)
            }
            return groups
        }
        let members = (0..<size).filter { result.parts[$0].value == color }
        return InProcessCommunicator(rank: members.firstIndex(of: rank)!, group: (result.value as! [Int: RankGroup])[color]!)
    }

    public func abort(_ message: String, code: Int32) -> Never {
        FileHandle.standardError.write(Data("goml-dist: error: \(message)\n".utf8))
        exit(code)
    }

    public func finalize() {}
    public func noteStep(_ step: Int) { self.step = step }

    /// Each rank's segment is its own allocation, freed with the last rank's SharedFloats.
    public func sharedFloats(count: Int) -> SharedFloats? {
        guard size > 1, localSize == size else { return nil }
        let mine = UnsafeMutableBufferPointer<Float>.allocate(capacity: count)
        mine.initialize(repeating: 0)
        let made = blockingValue("sharedFloats", Part(mine)) { parts in Segments(parts.map { $0.floats() }) }
        let segments = made.value as! Segments
        return SharedFloats(segments: segments.buffers) { [self] what in
            _ = segments
            blocking(what, Part(value: 0)) { _ in }
        }
    }

    // MARK: Non-blocking requests (a channel each, as each MPI request is its own)

    /// Requests this rank has made: the next one's number, the same on every rank.
    private var requestsMade = 0

    public func makeAllReduceSum(_ buffer: UnsafeMutableRawPointer, count: Int, of element: WireElement) -> CollectiveRequest {
        request(buffer, count: count, of: element) { parts in
            let sum = Self.sum(parts, count: count, of: element)
            for part in parts { part.input!.copyMemory(from: sum, byteCount: count * element.bytes) }
        }
    }

    public func makeReduceSum(_ buffer: UnsafeMutableRawPointer, count: Int, of element: WireElement, root: Int, persistent: Bool) -> CollectiveRequest {
        request(buffer, count: count, of: element) { parts in
            parts[root].input!.copyMemory(from: Self.sum(parts, count: count, of: element), byteCount: count * element.bytes)
        }
    }

    public func makeBroadcast(_ buffer: UnsafeMutableRawPointer, count: Int, of element: WireElement, root: Int) -> CollectiveRequest {
        request(buffer, count: count, of: element) { parts in
            for (r, part) in parts.enumerated() where r != root { part.input!.copyMemory(from: parts[root].input!, byteCount: count * element.bytes) }
        }
    }

    public func makeAllGather(_ buffer: UnsafeMutableRawPointer, counts: [Int], of element: WireElement) -> CollectiveRequest {
        request(buffer, count: counts.reduce(0, +), of: element) { parts in
            var start = 0
            for (owner, count) in counts.enumerated() {
                for (r, part) in parts.enumerated() where r != owner {
                    (part.input! + start * element.bytes).copyMemory(from: parts[owner].input! + start * element.bytes, byteCount: count * element.bytes)
                }
                start += count
            }
        }
    }

    private func request(_ buffer: UnsafeMutableRawPointer, count: Int, of element: WireElement, _ complete: @escaping ([Part]) -> Void) -> CollectiveRequest {
        requestsMade += 1
        return InProcessRequest(self, channel: .request(requestsMade), part: Part(UnsafeMutableRawBufferPointer(start: buffer, count: count * element.bytes)),
                                complete: complete)
    }

    fileprivate func start(_ request: InProcessRequest) -> Operation { join(request.channel, request.part, request.complete) }

    fileprivate func isDone(_ operation: Operation) -> Bool {
        group.condition.lock()
        defer { group.condition.unlock() }
        return operation.done
    }

    /// The same instance each time, as MPI's: a channel's count of joined operations is the instance's.
    public func companion(_ kind: Companion) -> Communicator? {
        companionsLock.lock()
        defer { companionsLock.unlock() }
        if let made = companionsMade[kind] { return made }
        let (sub, index) = group.companion(kind, of: rank)
        let made = sub.map { InProcessCommunicator(rank: index, group: $0) }
        companionsMade[kind] = made
        return made
    }
    private var companionsMade: [Companion: InProcessCommunicator?] = [:]
    private let companionsLock = NSLock()

    public func whileWaiting(for what: String, _ wait: () -> Void) {
        watchdogLock.lock()
        if watchdog == nil { watchdog = CollectiveWatchdog(rank: rank, host: hostName, timeout: group.timeout) }
        let watchdog = watchdog!
        watchdogLock.unlock()
        watchdog.step = step
        watchdog.enter(what)
        wait()
        watchdog.leave()
    }
    private var watchdog: CollectiveWatchdog?
    private let watchdogLock = NSLock()

    // MARK: The rendezvous

    /// Values in rank order, added in float32 left to right; with `bf16` each partial sum is
    /// rounded to bfloat16, as MPI's bf16 sum operator adds pairs.
    private static func sum(_ parts: [UnsafeMutableBufferPointer<Float>], count: Int, bf16: Bool = false) -> [Float] {
        func wire(_ x: Float) -> Float { bf16 ? goml_bf16_to_float(goml_bf16_from_float(x)) : x }
        var sum = parts[0].prefix(count).map(wire)
        for part in parts.dropFirst() { for i in 0..<count { sum[i] = wire(sum[i] + wire(part[i])) } }
        return sum
    }

    /// The elements of `parts` summed as `sum` adds them, in the parts' own format.
    private static func sum(_ parts: [Part], count: Int, of element: WireElement) -> [UInt8] {
        let floats: [UnsafeMutableBufferPointer<Float>] = parts.map { part in
            let values = UnsafeMutableBufferPointer<Float>.allocate(capacity: count)
            if element == .float32 {
                _ = values.initialize(from: UnsafeBufferPointer(start: part.input!.assumingMemoryBound(to: Float.self), count: count))
            } else {
                goml_bf16_decode(part.input!.assumingMemoryBound(to: UInt16.self), values.baseAddress, count)
            }
            return values
        }
        defer { floats.forEach { $0.deallocate() } }
        let sum = Self.sum(floats, count: count, bf16: element == .bfloat16)
        if element == .float32 { return sum.withUnsafeBytes { Array($0) } }
        return sum.map(goml_bf16_from_float).withUnsafeBytes { Array($0) }
    }

    /// Joins the next operation on `channel` with this rank's part; the last of `members` to join
    /// runs `complete` with every part in rank order (outside the lock) and marks it done.
    private func rendezvous(_ channel: Channel, _ part: Part, members: Int? = nil, _ complete: @escaping ([Part]) -> Any?) -> Operation {
        joinedLock.lock()
        let sequence = joined[channel, default: 0]
        joined[channel] = sequence + 1
        joinedLock.unlock()
        let key = OperationKey(channel: channel, sequence: sequence)
        let condition = group.condition
        condition.lock()
        let operation = group.operations[key] ?? Operation(members: members ?? size)
        group.operations[key] = operation
        operation.parts[members == nil ? rank : operation.arrived] = part
        operation.arrived += 1
        let last = operation.arrived == operation.members
        if last { group.operations[key] = nil }
        condition.unlock()
        if last {
            let value = complete(operation.parts.map { $0! })
            condition.lock()
            operation.value = value
            operation.done = true
            condition.broadcast()
            condition.unlock()
        }
        return operation
    }

    private func join(_ channel: Channel, _ part: Part, members: Int? = nil, _ complete: @escaping ([Part]) -> Void) -> Operation {
        rendezvous(channel, part, members: members) { complete($0); return nil }
    }

    /// A blocking collective: joins and waits. Returns every rank's part and the completion's value.
    private func blockingValue(_ what: String, _ part: Part, _ complete: @escaping ([Part]) -> Any?) -> (parts: [Part], value: Any?) {
        let operation = rendezvous(.blocking, part, complete)
        wait(for: operation, what)
        return (operation.parts.map { $0! }, operation.value)
    }

    private func blocking(_ what: String, _ part: Part, _ complete: @escaping ([Part]) -> Void) {
        _ = blockingValue(what, part) { complete($0); return nil }
    }

    /// Waits for `operation` under the collective timeout, as every wait of this communicator.
    private func wait(for operation: Operation, _ what: String) {
        whileWaiting(for: what) {
            group.condition.lock()
            while !operation.done { group.condition.wait() }
            group.condition.unlock()
        }
    }
}

/// What ranks share: the operations some but not all of their members have joined.
private final class RankGroup: @unchecked Sendable {
    let hostOfRank: [Int]
    /// Each rank's place among the ranks of its host.
    let localRank: [Int]
    let timeout: Double
    let condition = NSCondition()
    var operations: [OperationKey: Operation] = [:]
    var size: Int { hostOfRank.count }
    /// Per companion kind and host (-1: one for every rank), the group, made by the first rank to ask.
    private var companions: [Companion: [Int: RankGroup]] = [:]
    private let companionsLock = NSLock()

    /// `rank`'s companion group of `kind` and its index there (nil: not a member).
    func companion(_ kind: Companion, of rank: Int) -> (RankGroup?, Int) {
        let sameHost = hostOfRank.indices.filter { hostOfRank[$0] == hostOfRank[rank] }
        let members: [Int], key: Int
        switch kind {
        case .apart: (members, key) = (Array(hostOfRank.indices), -1)
        case .host, .hostApart: (members, key) = (sameHost, hostOfRank[rank])
        case .hostFirsts:
            guard localRank[rank] == 0 else { return (nil, 0) }
            (members, key) = (hostOfRank.indices.filter { localRank[$0] == 0 }, -1)
        }
        companionsLock.lock()
        defer { companionsLock.unlock() }
        let group = companions[kind]?[key] ?? RankGroup(hostOfRank: members.map { hostOfRank[$0] }, timeout: timeout)
        companions[kind, default: [:]][key] = group
        return (group, members.firstIndex(of: rank)!)
    }

    init(hostOfRank: [Int], timeout: Double) {
        self.hostOfRank = hostOfRank
        localRank = hostOfRank.indices.map { r in hostOfRank[..<r].filter { $0 == hostOfRank[r] }.count }
        self.timeout = timeout
    }
}

/// Collectives on one channel match in order; channels are independent, as MPI communicators
/// and requests are.
private enum Channel: Hashable {
    case blocking, request(Int), exchange(Int, Int)
}

private struct OperationKey: Hashable {
    let channel: Channel, sequence: Int
}

private final class Operation: @unchecked Sendable {
    let members: Int
    var parts: [Part?]
    var arrived = 0
    var done = false
    var value: Any?
    init(members: Int) {
        self.members = members
        parts = Array(repeating: nil, count: members)
    }
}

/// One rank's buffers in an operation: its input (in place: also its output) and, apart, its output.
private struct Part {
    var input: UnsafeMutableRawPointer?, count = 0
    var output: UnsafeMutableRawPointer?, outputCount = 0
    var value = 0

    init<T>(_ buffer: UnsafeMutableBufferPointer<T>, _ output: UnsafeMutableBufferPointer<T>? = nil, value: Int = 0) {
        input = buffer.baseAddress.map(UnsafeMutableRawPointer.init)
        count = buffer.count
        self.output = output?.baseAddress.map(UnsafeMutableRawPointer.init)
        outputCount = output?.count ?? 0
        self.value = value
    }
    init(_ buffer: UnsafeMutableRawBufferPointer) {
        input = buffer.baseAddress
        count = buffer.count
    }
    init(value: Int) { self.value = value }

    func floats(output: Bool = false) -> UnsafeMutableBufferPointer<Float> { typed(output) }
    func doubles(output: Bool = false) -> UnsafeMutableBufferPointer<Double> { typed(output) }
    func bytes() -> UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: input, count: count) }
    private func typed<T>(_ output: Bool) -> UnsafeMutableBufferPointer<T> {
        let (pointer, n) = output ? (self.output, outputCount) : (input, count)
        return UnsafeMutableBufferPointer(start: pointer?.assumingMemoryBound(to: T.self), count: n)
    }
}

/// One request of a rank: its channel, its buffer, and what the last rank to start it does.
private final class InProcessRequest: CollectiveRequest {
    let channel: Channel, part: Part, complete: ([Part]) -> Void
    private unowned let comm: InProcessCommunicator
    private var operation: Operation?

    init(_ comm: InProcessCommunicator, channel: Channel, part: Part, complete: @escaping ([Part]) -> Void) {
        self.comm = comm
        self.channel = channel
        self.part = part
        self.complete = complete
    }

    func start() { operation = comm.start(self) }
    func test() -> Bool { operation.map(comm.isDone) ?? true }
}

/// The ranks' shared segments, freed once no rank holds them.
private final class Segments: @unchecked Sendable {
    let buffers: [UnsafeMutableBufferPointer<Float>]
    init(_ buffers: [UnsafeMutableBufferPointer<Float>]) { self.buffers = buffers }
    deinit { buffers.forEach { $0.deallocate() } }
}

/// The ranks' results, each set once by its thread.
private final class ResultSlots<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var slots: [Result<T, Error>?]
    init(count: Int) { slots = Array(repeating: nil, count: count) }
    func set(_ rank: Int, _ result: Result<T, Error>) { lock.lock(); slots[rank] = result; lock.unlock() }
    func values() throws -> [T] { try slots.map { try $0!.get() } }
}
