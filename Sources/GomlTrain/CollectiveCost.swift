// CollectiveCost: what the gradient collectives cost on an α–β link model, message by message
// as OpenMPI 4.1.4's libnbc schedules them (ompi/mca/coll/libnbc: nbc_iallreduce.c,
// nbc_ireduce.c, nbc_iallgatherv.c) for the calls the Reducer makes: the bucketed
// all-reduce (algorithm 3, which MPICommunicator sets: Rabenseifner's reduce-scatter +
// all-gather, the ring below 2^⌊log2 p⌋ elements), the sharded reduce-scatter (one MPI_Ireduce
// per bucket and owner, libnbc's default choice: Rabenseifner's reduce-scatter + binomial
// gather, a binomial tree for short slices, one message at p = 2) and the parameter all-gather
// (MPIX_Allgatherv_init: every rank sends its slice to every other, one round). Pure values: no
// MPI here. Used by ScalingPlan; docs/scaling.md says what this leaves out.

import GomlComm

/// Ranks on hosts: `ranksPerHost` consecutive ranks on each host (mpirun's order by slot).
public struct PlanTopology: Hashable, Sendable {
    public let hosts: Int, ranksPerHost: Int
    public init(hosts: Int, ranksPerHost: Int) { self.hosts = hosts; self.ranksPerHost = ranksPerHost }
    public var ranks: Int { hosts * ranksPerHost }
    func host(_ rank: Int) -> Int { rank / ranksPerHost }
}

/// A link: its rate and the latency each message round pays.
public struct LinkModel: Sendable, Equatable {
    public var gbitPerSecond: Double, latencySeconds: Double
    public init(gbitPerSecond: Double, latencySeconds: Double) { self.gbitPerSecond = gbitPerSecond; self.latencySeconds = latencySeconds }
    func seconds(_ cost: LinkCost) -> (latency: Double, transfer: Double) {
        (Double(cost.rounds) * latencySeconds, cost.bytes * 8 / (gbitPerSecond * 1e9))
    }
}

/// A collective (or several running together) on the α–β model: the rounds whose messages
/// cross a host's link, and the bytes through the busiest link direction, summed over rounds.
public struct LinkCost: Sendable, Equatable {
    public var rounds = 0, bytes = 0.0
}

/// Messages of collectives that run together, round by round: each host's link carries what
/// its ranks send to and receive from other hosts; within a host (shared memory) is free, and
/// so is an empty message.
struct RoundLoads {
    let topology: PlanTopology
    private var sent: [[Double]] = [], received: [[Double]] = []

    init(_ topology: PlanTopology) { self.topology = topology }

    mutating func send(round: Int, from: Int, to: Int, bytes: Double) {
        let a = topology.host(from), b = topology.host(to)
        guard a != b, bytes > 0 else { return }
        while sent.count <= round {
            sent.append(Array(repeating: 0, count: topology.hosts)); received.append(Array(repeating: 0, count: topology.hosts))
        }
        sent[round][a] += bytes
        received[round][b] += bytes
    }

    /// The bytes through the busiest link direction over all rounds: what collectives running
    /// together cannot beat, however their rounds interleave.
    var busiestTotal: Double {
        guard let first = sent.first else { return 0 }
        var out = Array(repeating: 0.0, count: first.count), into = out
        for (s, r) in zip(sent, received) {
            for h in s.indices { out[h] += s[h]; into[h] += r[h] }
        }
        return max(out.max() ?? 0, into.max() ?? 0)
    }

    /// One collective's rounds in turn: a round whose messages all stay inside hosts costs
    /// nothing; every other pays one latency and its busiest link direction's bytes.
    var cost: LinkCost {
        var c = LinkCost()
        for (out, into) in zip(sent, received) where out.contains(where: { $0 > 0 }) || into.contains(where: { $0 > 0 }) {
            c.rounds += 1
            c.bytes += max(out.max() ?? 0, into.max() ?? 0)
        }
        return c
    }
}

/// libnbc's schedules, as messages into `RoundLoads`. `unit`: bytes per element on the wire.
enum LibNBC {
    /// Rabenseifner's first step and recursive halving, shared by the all-reduce and the reduce:
    /// rank `rank`'s virtual rank (nil: folded into its even neighbour) and, per halving step,
    /// its partner and the elements it sends and keeps. Sends go into `loads` from round 0.
    static func halving(rank: Int, count: Int, ranks p: Int, unit: Double, weight: Double, loads: inout RoundLoads)
        -> (vrank: Int?, steps: [(dest: Int, send: Int, keep: Int)], base: Int) {
        let nsteps = Int.bitWidth - 1 - p.leadingZeroBitCount, pof2 = 1 << nsteps, rem = p - pof2
        var vrank: Int? = rank - rem
        if rank < 2 * rem {
            let left = count / 2, right = count - left
            if rank % 2 != 0 {
                loads.send(round: 0, from: rank, to: rank - 1, bytes: weight * unit * Double(left))
                loads.send(round: 1, from: rank, to: rank - 1, bytes: weight * unit * Double(right))
                vrank = nil
            } else {
                loads.send(round: 0, from: rank, to: rank + 1, bytes: weight * unit * Double(right))
                vrank = rank / 2
            }
        }
        let base = rem > 0 ? 2 : 0
        guard let v = vrank else { return (nil, [], base) }
        var steps: [(dest: Int, send: Int, keep: Int)] = [], window = count
        for k in 0..<nsteps {
            let vdest = v ^ (1 << k), dest = vdest < rem ? vdest * 2 : vdest + rem
            let keep = rank < dest ? window / 2 : window - window / 2
            steps.append((dest, window - keep, keep))
            loads.send(round: base + k, from: rank, to: dest, bytes: weight * unit * Double(window - keep))
            window = keep
        }
        return (v, steps, base)
    }

    /// MPI_Iallreduce of `count` elements, algorithm 3.
    static func allReduce(count: Int, unit: Double, weight: Double = 1, loads: inout RoundLoads) {
        let p = loads.topology.ranks
        guard p > 1 else { return }
        let nsteps = Int.bitWidth - 1 - p.leadingZeroBitCount, rem = p - (1 << nsteps)
        guard count >= 1 << nsteps else { return ring(count: count, unit: unit, weight: weight, loads: &loads) }
        for rank in 0..<p {
            let (vrank, steps, base) = halving(rank: rank, count: count, ranks: p, unit: unit, weight: weight, loads: &loads)
            if vrank != nil {
                // All-gather by recursive doubling: the halving in reverse.
                for (i, k) in (0..<nsteps).reversed().enumerated() {
                    loads.send(round: base + nsteps + i, from: rank, to: steps[k].dest, bytes: weight * unit * Double(steps[k].keep))
                }
            }
            if rank < 2 * rem && rank % 2 == 0 {
                loads.send(round: base + 2 * nsteps, from: rank, to: rank + 1, bytes: weight * unit * Double(count))
            }
        }
    }

    /// libnbc's ring all-reduce: p − 1 rounds summing segments around the ring, p − 1 passing them on.
    static func ring(count: Int, unit: Double, weight: Double, loads: inout RoundLoads) {
        let p = loads.topology.ranks, segment = Double((count + p - 1) / p)
        for round in 0..<(2 * (p - 1)) {
            for rank in 0..<p { loads.send(round: round, from: rank, to: (rank + 1) % p, bytes: weight * unit * segment) }
        }
    }

    /// MPI_Ireduce of `count` elements to `root`, libnbc's default choice for a commutative sum.
    /// `halvingDone`: the root-independent reduce-scatter is already in `loads` (it is the same
    /// for every root of a bucket's slices of one size).
    static func reduce(count: Int, root: Int, unit: Double, loads: inout RoundLoads, halvingDone: Bool = false) {
        let p = loads.topology.ranks
        guard p > 1 else { return }
        let nsteps = Int.bitWidth - 1 - p.leadingZeroBitCount, pof2 = 1 << nsteps, rem = p - pof2
        guard p > 2 && count >= pof2 else {
            // Binomial tree (at p = 2 also the chain: one message either way), ranks 0 and root swapped.
            let vrank = { (r: Int) in r == 0 ? root : r == root ? 0 : r }
            for rank in 0..<p where rank != root {
                let v = vrank(rank), r = v.trailingZeroBitCount
                loads.send(round: r, from: rank, to: vrank(v - (1 << r)), bytes: unit * Double(count))
            }
            return
        }
        let foldedRoot = root < 2 * rem && root % 2 != 0
        let vroot = foldedRoot ? 0 : root < 2 * rem ? root / 2 : root - rem
        for rank in 0..<p {
            var (vrank, steps, base) = halving(rank: rank, count: count, ranks: p, unit: unit, weight: halvingDone ? 0 : 1, loads: &loads)
            if foldedRoot && vrank == 0 {
                // The root was folded away in the first step: rank 0 hands it its block and leaves.
                loads.send(round: base + nsteps, from: rank, to: root, bytes: unit * Double(steps[nsteps - 1].keep))
                vrank = nil
            }
            guard let v = vrank else { continue }
            // Binomial gather to the root, blocks doubling.
            for (i, k) in (0..<nsteps).reversed().enumerated() {
                let vdest = v ^ (1 << k)
                let dest = vdest == 0 && foldedRoot ? root : vdest < rem ? vdest * 2 : vdest + rem
                if vdest >> k == vroot >> k {
                    loads.send(round: base + nsteps + 1 + i, from: rank, to: dest, bytes: unit * Double(steps[k].keep))
                    break
                }
            }
        }
    }
}

/// The cost of each bucket's collective for one topology, computed once per bucket shape.
final class CollectiveCosts {
    let topology: PlanTopology
    private var cache: [String: LinkCost] = [:]

    init(_ topology: PlanTopology) { self.topology = topology }

    private func cached(_ key: String, _ make: () -> LinkCost) -> LinkCost {
        if let c = cache[key] { return c }
        let c = make()
        cache[key] = c
        return c
    }

    /// One bucket's all-reduce of `count` elements; `concurrent` copies run at once on every
    /// host (DiLoCo's peer groups, one per rank of a host).
    func allReduce(count: Int, unit: Int, concurrent: Int = 1) -> LinkCost {
        cached("ar \(count) \(unit) \(concurrent)") {
            var loads = RoundLoads(topology)
            LibNBC.allReduce(count: count, unit: Double(unit), weight: Double(concurrent), loads: &loads)
            return loads.cost
        }
    }

    /// One bucket's reduce-scatter as the Reducer runs it: every owner's reduce of its
    /// slice (`counts`, in rank order), all started together. They do not keep in step: the
    /// bucket takes its rounds' latencies once, and the longer of one reduce's own rounds in
    /// turn and the busiest link's bytes of them all.
    func reduceToOwners(counts: [Int], unit: Int) -> LinkCost {
        cached("rs \(counts) \(unit)") {
            var loads = RoundLoads(topology)
            let p = topology.ranks, pof2 = 1 << (Int.bitWidth - 1 - p.leadingZeroBitCount)
            // Rabenseifner's reduce-scatter half does not depend on the root: added once per slice size.
            var halved = Set<Int>()
            for (root, count) in counts.enumerated() {
                let rabenseifner = p > 2 && count >= pof2
                if rabenseifner {
                    let owners = counts.filter { $0 == count }.count
                    if halved.insert(count).inserted {
                        for rank in 0..<p {
                            _ = LibNBC.halving(rank: rank, count: count, ranks: p, unit: Double(unit), weight: Double(owners), loads: &loads)
                        }
                    }
                }
                LibNBC.reduce(count: count, root: root, unit: Double(unit), loads: &loads, halvingDone: rabenseifner)
            }
            var one = RoundLoads(topology)
            LibNBC.reduce(count: counts.max() ?? 0, root: 0, unit: Double(unit), loads: &one)
            return LinkCost(rounds: loads.cost.rounds, bytes: max(loads.busiestTotal, one.cost.bytes))
        }
    }

    /// One bucket's all-gather: every rank sends its slice (`sliceBytes`, in rank order) to
    /// every other rank in one round; a host's link carries its ranks' slices to every other
    /// host's ranks, and the others' slices to each of its ranks.
    func allGather(sliceBytes: [Int]) -> LinkCost {
        let r = topology.ranksPerHost, total = Double(sliceBytes.reduce(0, +))
        guard topology.hosts > 1 else { return LinkCost() }
        var busiest = 0.0
        for h in 0..<topology.hosts {
            let mine = Double(sliceBytes[(h * r)..<((h + 1) * r)].reduce(0, +))
            busiest = max(busiest, mine * Double(topology.ranks - r), (total - mine) * Double(r))
        }
        return LinkCost(rounds: 1, bytes: busiest)
    }
}
