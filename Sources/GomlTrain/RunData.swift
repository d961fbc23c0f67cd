// RunData: the training text (and --val-data's) of a run, mapped and split on this rank, with
// what the header prints and what checkpoints store to recognise it. Opening only; the ranks
// compare their corpora in SetupAgreement.

import Foundation
import GomlCore
import GomlIO

/// The training text (and --val-data's), mapped and split, and how the run names it.
public struct RunData {
    public let split: TextSplit
    /// For the run header: the paths, file and byte counts and fingerprints.
    public let description: String
    /// Identifies the corpus in checkpoints: --data's fingerprint, and --val-data's if given.
    public let identity: String
    let files: Int, bytes: Int
    let fingerprint: UInt64
}

/// This machine's name without a DNS lookup (Foundation's hostName may resolve it).
func localHostName() -> String {
    var name = [CChar](repeating: 0, count: 256)
    return gethostname(&name, name.count - 1) == 0 ? String(cString: name) : "this host"
}

/// Maps `--data` (required) and `--val-data` on this rank; errors name the path and the fix.
public func openData(_ data: [String], validation: [String]) throws -> RunData {
    guard !data.isEmpty else {
        throw FileError("no training data: pass --data PATH… (files or directories; the repository ships data/tinyshakespeare.txt)")
    }
    let host = localHostName()
    let corpus = try Corpus.open(data, flag: "--data", host: host)
    let names = data.joined(separator: " ")
    guard !validation.isEmpty else {
        return RunData(split: TextSplit(corpus: corpus.bytes, name: "--data \(names)"), description: "\(names) (\(corpus.summary))",
                       identity: Corpus.hex(corpus.fingerprint), files: corpus.files.count, bytes: corpus.count,
                       fingerprint: corpus.fingerprint)
    }
    let held = try Corpus.open(validation, flag: "--val-data", host: host)
    let heldNames = validation.joined(separator: " ")
    return RunData(split: TextSplit(train: corpus.bytes, trainName: "--data \(names)", validation: held.bytes, validationName: "--val-data \(heldNames)"),
                   description: "\(names) (\(corpus.summary)), validation \(heldNames) (\(held.summary))",
                   identity: "\(Corpus.hex(corpus.fingerprint)) val \(Corpus.hex(held.fingerprint))",
                   files: corpus.files.count + held.files.count, bytes: corpus.count + held.count,
                   fingerprint: corpus.fingerprint ^ (held.fingerprint &* 0x9E37_79B9_7F4A_7C15))
}
