// SetupAgreement: collectives that make every rank leave set-up together. A failure on any
// rank (bad options, a missing file, another corpus on one host) ends every rank with the same
// exit code and one message, printed once, before the first training collective.

import Foundation
import GomlComm
import GomlIO

/// Runs `body` on every rank; if it throws on any rank, every rank exits with `code`, and the
/// lowest failing rank's message is printed once (prefixed with its rank and host under MPI).
public func agreeOnSetup<T>(_ comm: Communicator, code: Int32 = ExitStatus.setup.code, _ body: () throws -> T) -> T {
    var result: T?
    var message = ""
    do { result = try body() } catch { message = "\(error)" }
    var failed = [Double](repeating: 0, count: comm.size)
    if result == nil { failed[comm.rank] = 1 }
    failed.withUnsafeMutableBufferPointer { comm.allReduceSum($0) }
    if let first = failed.firstIndex(where: { $0 != 0 }) {
        if comm.rank == first {
            let origin = comm.size > 1 && first != 0 ? "rank \(first) on \(comm.hostName): " : ""
            FileHandle.standardError.write(Data("goml-dist: error: \(origin)\(message)\n".utf8))
        }
        comm.finalize()
        exit(code)
    }
    return result!
}

/// Every rank compares its corpus (files, bytes, fingerprint) with rank 0's, so a host that
/// holds other files under the same paths is caught before training; the rank that differs
/// names itself, its host and rank 0's. A SIGBUS guard message names the rank too.
public func agreeOnData(_ comm: Communicator, _ data: RunData) {
    configureCorpusGuard(prefix: comm.size > 1 ? "rank \(comm.rank) on \(comm.hostName): " : "", code: ExitStatus.dataShrank.code)
    guard comm.size > 1 else { return }
    agreeOnSetup(comm) {
        func describe(_ v: ArraySlice<Double>) -> String {
            let i = v.startIndex
            return "\(Int(v[i])) file\(v[i] == 1 ? "" : "s"), \(Int(v[i + 1])) bytes, fingerprint \(Corpus.hex(WordHalves.join(v[i + 2], v[i + 3])))"
        }
        let fingerprint = WordHalves.split(data.fingerprint)
        let mine = [Double(data.files), Double(data.bytes), fingerprint.high, fingerprint.low]
        var all = [Double](repeating: 0, count: mine.count * comm.size)
        mine.withUnsafeBufferPointer { m in all.withUnsafeMutableBufferPointer { comm.allGather(m, into: $0) } }
        var rootHost = [UInt8](repeating: 0, count: 256)
        if comm.isRoot { for (i, byte) in comm.hostName.utf8.prefix(255).enumerated() { rootHost[i] = byte } }
        rootHost.withUnsafeMutableBytes { comm.broadcast($0, root: 0) }
        let rootName = String(decoding: rootHost.prefix { $0 != 0 }, as: UTF8.self)
        if Array(all[0..<mine.count]) != mine {
            throw FileError("its corpus differs from rank 0's on \(rootName) (here \(describe(mine[...])); rank 0 \(describe(all[0..<mine.count]))); give --data (and --val-data) the same files on every host")
        }
    }
}
