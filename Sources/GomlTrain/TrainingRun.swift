// TrainingRun: the loop around Trainer. Every rank runs it; rank 0 alone prints, writes
// metrics.jsonl, evaluates' report, generates samples and checkpoints. Decisions that end
// the run (non-finite values, ranks that disagree) are taken from values every rank shares,
// so all ranks leave together.

import Foundation
import GomlCore
import GomlIO

public struct RunSettings {
    public var outDirectory = "out"
    public var dataName = "demo text"
    public var threads = 1
    /// Continue from a checkpoint: every rank sets `resume`; rank 0 alone holds the checkpoint.
    public var resume = false
    public var resumeFrom: TrainingCheckpoint? = nil
    public var peakGFLOPS: Double = 0
    /// Why the run's precision was chosen, for the header.
    public var precisionReason = "requested"
    /// Stop (with a checkpoint) after this step, as if the job had been interrupted there.
    public var stopAfter: Int? = nil
    /// Show the live progress line even where stdout's kind cannot be told (under mpirun).
    public var progress = false
    /// Fault injection for tests: this rank nudges one parameter after its first step, as a
    /// replica that silently diverged would.
    public var divergingRank: Int? = nil
    public init() {}
}

/// Why a run ended early, with the exit code the job returns.
public struct RunFailure: Error, CustomStringConvertible {
    public let message: String
    public let code: Int32
    public var description: String { message }
}

public final class TrainingRun {
    let trainer: Trainer
    let settings: RunSettings
    let comm: Communicator
    var sampleRNG: Xoshiro256
    let log: RankZeroLog
    private var header: [Double]
    private var gathered: [Double]
    private let optionsJSON: String
    private let configHash: UInt64

    public init(trainer: Trainer, settings: RunSettings) throws {
        self.trainer = trainer
        self.settings = settings
        comm = trainer.comm
        sampleRNG = Xoshiro256(seed: trainer.options.seed ^ 0x5A4D_504C_4521)
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        optionsJSON = String(decoding: try encoder.encode(trainer.options), as: UTF8.self)
        // The hash of the options' bytes (each widened to a float so the one checksum serves).
        configHash = Array(optionsJSON.utf8).map { Float($0) }.withUnsafeBufferPointer { contentChecksum($0) }
        header = Array(repeating: 0, count: Self.headerFields)
        gathered = Array(repeating: 0, count: Self.headerFields * trainer.comm.size)
        log = try RankZeroLog(isRoot: trainer.comm.isRoot, directory: settings.outDirectory,
                              resumeStep: settings.resumeFrom?.step, forceProgress: settings.progress)
    }

    /// Restores parameters, moments, step and generators: rank 0 read the checkpoint (only its
    /// host need see the output directory) and broadcasts it.
    func restore() {
        var state = [UInt64](repeating: 0, count: 10)   // step, Adam step, batch and sample generators
        if let ckpt = settings.resumeFrom {
            _ = trainer.params.pointer.update(from: ckpt.params)
            _ = trainer.optimizer.m.update(from: ckpt.m)
            _ = trainer.optimizer.v.update(from: ckpt.v)
            state = [UInt64(ckpt.step), UInt64(ckpt.adamStep)] + (ckpt.generators["batch"] ?? trainer.sampler.rng.stateWords)
                + (ckpt.generators["sample"] ?? sampleRNG.stateWords)
        }
        for buffer in [trainer.params.pointer, trainer.optimizer.m, trainer.optimizer.v] {
            comm.broadcast(UnsafeMutableRawBufferPointer(buffer), root: 0)
        }
        state.withUnsafeMutableBytes { comm.broadcast($0, root: 0) }
        trainer.step = Int(state[0])
        trainer.optimizer.step = Int(state[1])
        trainer.sampler.rng = Xoshiro256(state: Array(state[2..<6]))
        sampleRNG = Xoshiro256(state: Array(state[6..<10]))
    }

    public func run() throws {
        let o = trainer.options
        if settings.resume { restore() } else { trainer.initialiseParameters() }
        printHeader()
        let started = Date()
        var trainSeconds = 0.0
        let lastStep = min(o.steps, settings.stopAfter ?? o.steps)
        while trainer.step < lastStep {
            try agreeOnHeader(nextStep: trainer.step + 1)
            let result = trainer.trainStep()
            trainSeconds += result.timings.total
            guard result.finite else {
                throw RunFailure(message: "non-finite \(result.loss.isFinite ? "gradient norm" : "loss") at step \(result.step) (loss \(result.loss), grad norm \(result.gradNorm)); stopped without writing a checkpoint — lower --lr or check the data", code: 5)
            }
            let step = result.step
            if settings.divergingRank == comm.rank && step == 1 { trainer.params.pointer[0] += 1e-3 }
            var record: [(String, String)] = [
                ("step", "\(step)"), ("loss", "\(result.loss)"), ("lr", "\(result.lr)"), ("grad_norm", "\(result.gradNorm)"),
                ("ms", String(format: "%.3f", result.timings.total * 1000)),
                ("tokens_per_s", String(format: "%.1f", Double(o.batch * o.model.seqLen) / result.timings.total)),
                ("elapsed_s", String(format: "%.3f", Date().timeIntervalSince(started))),
                ("train_s", String(format: "%.3f", trainSeconds)),
            ]
            log.step(result, of: o, tokensPerStep: o.batch * o.model.seqLen, peakGFLOPS: settings.peakGFLOPS * Double(comm.size),
                     elapsed: Date().timeIntervalSince(started), force: step % o.logEvery == 0 || step == o.steps)
            if (o.evalEvery > 0 && step % o.evalEvery == 0) || step == o.steps {
                let validation = trainer.evaluate()
                record.append(("val_loss", "\(validation)"))
                log.line(String(format: "step %6d | val loss %.4f | %.1f s", step, validation, Date().timeIntervalSince(started)))
            }
            log.metrics(record)
            if comm.isRoot && o.sampleEvery > 0 && step % o.sampleEvery == 0 { sample() }
            if (o.ckptEvery > 0 && step % o.ckptEvery == 0) || step == lastStep { try checkpoint() }
        }
        log.line(String(format: "done: %d steps in %.1f s (%.1f s training)", trainer.step, Date().timeIntervalSince(started), trainSeconds))
    }

    /// Rank 0 writes the checkpoint; a failure there ends the whole job, so no rank goes on alone.
    private func checkpoint() throws {
        var ok = true, message = ""
        if comm.isRoot {
            do {
                let path = try Checkpoint.save(
                    directory: settings.outDirectory, layout: trainer.layout, step: trainer.step, optionsJSON: optionsJSON,
                    params: UnsafeBufferPointer(trainer.params.pointer), m: UnsafeBufferPointer(trainer.optimizer.m),
                    v: UnsafeBufferPointer(trainer.optimizer.v), adamStep: trainer.optimizer.step,
                    generators: ["batch": trainer.sampler.rng.stateWords, "sample": sampleRNG.stateWords], keep: trainer.options.keep)
                log.line("checkpoint \(path)")
            } catch {
                ok = false
                message = "cannot write checkpoint at step \(trainer.step): \(error)"
            }
        }
        if !comm.allAgree(ok) {
            throw RunFailure(message: comm.isRoot ? message : "", code: 7)
        }
    }

    /// Rank 0's sample, from its own generator so the training trajectory never depends on it.
    private func sample() {
        do {
            let generator = try TextGenerator(config: trainer.options.model, parameters: trainer.params.array,
                                          precision: trainer.options.precision)
            var text: [UInt8] = []
            try generator.generate(prompt: [10], count: trainer.options.sampleTokens,
                                   options: SamplingOptions(temperature: 0.8, topK: 40), seed: sampleRNG.next()) { text.append($0) }
            log.line("sample at step \(trainer.step):\n" + String(decoding: text, as: UTF8.self) + "\n---")
        } catch {
            log.line("sample failed: \(error)")
        }
    }

    static let headerFields = 7

    /// Every rank shares (step, options hash, data position, and every --checksum-every steps a
    /// parameter checksum); any difference names the ranks and stops the job.
    private func agreeOnHeader(nextStep: Int) throws {
        func split(_ v: UInt64) -> (Double, Double) { (Double(v >> 32), Double(v & 0xFFFF_FFFF)) }
        let checksum = trainer.options.checksumEvery > 0 && (nextStep - 1) % trainer.options.checksumEvery == 0
            ? trainer.parameterChecksum() : 0
        let data = trainer.sampler.rng.state.0
        (header[1], header[2]) = split(configHash)
        (header[3], header[4]) = split(data)
        (header[5], header[6]) = split(checksum)
        header[0] = Double(nextStep)
        comm.noteStep(nextStep)
        header.withUnsafeBufferPointer { h in gathered.withUnsafeMutableBufferPointer { comm.allGather(h, into: $0) } }
        let n = Self.headerFields
        for r in 1..<max(1, comm.size) where Array(gathered[(r * n)..<((r + 1) * n)]) != Array(gathered[0..<n]) {
            let what = gathered[r * n] != gathered[0] ? "step"
                : (gathered[r * n + 1], gathered[r * n + 2]) != (gathered[1], gathered[2]) ? "options/config"
                : (gathered[r * n + 3], gathered[r * n + 4]) != (gathered[3], gathered[4]) ? "data position" : "parameter checksum"
            throw RunFailure(message: comm.isRoot ? "ranks 0 and \(r) disagree on the \(what) before step \(nextStep); replicas diverged — stopping" : "", code: 6)
        }
    }

    private func printHeader() {
        let o = trainer.options
        let resume = settings.resumeFrom.map { " resumed from \($0.path) at step \($0.step)" } ?? ""
        log.line("goml-dist train: \(o.model.summary), \(trainer.layout.count) parameters\(resume)")
        log.line("world \(comm.size) rank(s), \(settings.threads) BLAS thread(s) per rank, reduction \(o.reduction.rawValue)")
        log.line("precision \(o.precision.rawValue) (\(settings.precisionReason))")
        log.line("data \(settings.dataName): \(trainer.trainBytes) train / \(trainer.validationBytes) validation bytes; batch \(o.batch) × \(o.model.seqLen) = \(o.batch * o.model.seqLen) tokens/step")
        log.line("steps \(o.steps), lr \(o.lr) → \(o.minLR), warmup \(o.warmup), out \(settings.outDirectory)")
    }
}
