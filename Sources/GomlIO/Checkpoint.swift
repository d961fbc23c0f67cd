// Checkpoint: what a run needs to continue exactly, as two safetensors files per step.
//   ckpt-0000040.safetensors        the model: docs/model.md's tensor names only, so safetensors.torch.load_file
//                                   gives a state dict a PyTorch model of docs/model.md loads as is; metadata:
//                                   format, config, step, training options, content checksum, and
//                                   the fingerprint of the data it was trained on.
//   ckpt-0000040.state.safetensors  training state: AdamW moments (m.<name>, v.<name>), Adam step,
//                                   generator states, the learning-rate schedule in force, the
//                                   run's seconds so far, and the model file's checksum (ties the pair).
//   ckpt-0000040.outer.safetensors  low-communication runs only: the outer momentum and every
//                                   worker's parameters, moments and batch generator (the model
//                                   file then holds θ_global, the state file worker 0's moments).
// `latest` names the newest complete pair. Every file is written durably (DurableFile), state
// first, model second, `latest` last: a crash at any instant leaves the previous `latest` valid.

import Foundation
import GomlCore

public struct TrainingCheckpoint {
    public let path: String
    public let config: ModelConfig
    public let step: Int
    /// The training options the run was started with, as JSON.
    public let optionsJSON: String
    public let params: [Float]
    public let m: [Float], v: [Float]
    public let adamStep: Int
    /// Named generator states (four words each).
    public let generators: [String: [UInt64]]
    /// The training data's fingerprint (see Corpus); nil in checkpoints written before it was stored.
    public let dataFingerprint: String?
    /// A low-communication run's outer state; nil otherwise.
    public var outer: OuterCheckpoint? = nil
    /// The schedule the run followed, and its wall-clock and training seconds at this step (nil
    /// in checkpoints written before they were stored).
    public var progress: RunProgress? = nil
}

/// Where a run stood when it checkpointed, beyond its step: what continues across a resume.
public struct RunProgress: Codable, Equatable, Sendable {
    public var schedule: LearningRateSchedule
    public var elapsedSeconds: Double, trainSeconds: Double
    public init(schedule: LearningRateSchedule, elapsedSeconds: Double, trainSeconds: Double) {
        self.schedule = schedule; self.elapsedSeconds = elapsedSeconds; self.trainSeconds = trainSeconds
    }
}

/// DiLoCo's state beyond θ_global: the outer Nesterov momentum and each worker's inner state.
public struct OuterCheckpoint {
    public let momentum: [Float]
    public let workers: [WorkerCheckpoint]
    /// An overlapped outer step's summed Δ, saved before it was applied (nil when none was pending).
    public let pendingSum: [Float]?
    public init(momentum: [Float], workers: [WorkerCheckpoint], pendingSum: [Float]? = nil) {
        self.momentum = momentum; self.workers = workers; self.pendingSum = pendingSum
    }
}

public struct WorkerCheckpoint {
    public let params: [Float], m: [Float], v: [Float]
    /// The worker's batch generator state.
    public let generator: [UInt64]
    public init(params: [Float], m: [Float], v: [Float], generator: [UInt64]) {
        self.params = params; self.m = m; self.v = v; self.generator = generator
    }
}

public enum Checkpoint {
    public static let format = "goml-dist-checkpoint-1"
    public static let latestName = "latest"

    public static func modelFileName(step: Int) -> String { String(format: "ckpt-%07d.safetensors", step) }
    static func stateFileName(forModel name: String) -> String {
        String(name.dropLast(".safetensors".count)) + ".state.safetensors"
    }
    static func outerFileName(forModel name: String) -> String {
        String(name.dropLast(".safetensors".count)) + ".outer.safetensors"
    }

    /// Writes the pair for `step` into `directory`, points `latest` at it, keeps the newest `keep`.
    /// Returns the model file's path.
    @discardableResult
    public static func save(directory: String, layout: ParameterLayout, step: Int, optionsJSON: String,
                            params: UnsafeBufferPointer<Float>, m: UnsafeBufferPointer<Float>, v: UnsafeBufferPointer<Float>,
                            adamStep: Int, generators: [String: [UInt64]], keep: Int, dataFingerprint: String = "",
                            outer: OuterCheckpoint? = nil, progress: RunProgress? = nil) throws -> String {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let modelName = modelFileName(step: step), stateName = stateFileName(forModel: modelName)
        let modelChecksum = contentChecksum(params)
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys   // the same config gives the same bytes
        let configJSON = String(decoding: try encoder.encode(layout.config), as: UTF8.self)

        var state = SafetensorsWriter(metadata: [
            "format": format, "step": String(step), "adam_step": String(adamStep),
            "model_checksum": hex(modelChecksum),
            "checksum": hex(contentChecksum(v, seed: contentChecksum(m))),
        ])
        for (name, words) in generators { state.metadata["generator." + name] = words.map(String.init).joined(separator: ",") }
        if let progress { state.metadata["progress"] = String(decoding: try encoder.encode(progress), as: UTF8.self) }
        var model = SafetensorsWriter(metadata: [
            "format": format, "config": configJSON, "step": String(step), "options": optionsJSON,
            "checksum": hex(modelChecksum), "state_file": stateName,
        ])
        if !dataFingerprint.isEmpty { model.metadata["data_fingerprint"] = dataFingerprint }
        if let outer {
            // Written first, like the state file: a model file that names it implies it is complete.
            let outerName = outerFileName(forModel: modelName)
            try DurableFile.write(try outerFile(outer, layout: layout, step: step, modelChecksum: modelChecksum).serialized(),
                                  to: directory + "/" + outerName)
            model.metadata["outer_file"] = outerName
        }
        for t in layout.tensors {
            try model.addFloats(t.name, shape: t.shape, UnsafeBufferPointer(rebasing: params[t.range]))
            try state.addFloats("m." + t.name, shape: t.shape, UnsafeBufferPointer(rebasing: m[t.range]))
            try state.addFloats("v." + t.name, shape: t.shape, UnsafeBufferPointer(rebasing: v[t.range]))
        }
        try DurableFile.write(state.serialized(), to: directory + "/" + stateName)
        try DurableFile.write(model.serialized(), to: directory + "/" + modelName)
        try DurableFile.write(Array((modelName + "\n").utf8), to: directory + "/" + latestName)
        prune(directory: directory, keep: keep)
        return directory + "/" + modelName
    }

    /// Deletes all but the newest `keep` checkpoint pairs (never the one `latest` names).
    static func prune(directory: String, keep: Int) {
        guard keep > 0, let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return }
        let latest = try? latestModelName(directory: directory)
        let models = names.filter { $0.hasPrefix("ckpt-") && $0.hasSuffix(".safetensors") && !$0.hasSuffix(".state.safetensors") }.sorted()
        for name in models.dropLast(keep) where name != latest {
            try? FileManager.default.removeItem(atPath: directory + "/" + stateFileName(forModel: name))
            try? FileManager.default.removeItem(atPath: directory + "/" + outerFileName(forModel: name))
            try? FileManager.default.removeItem(atPath: directory + "/" + name)
        }
    }

    static func latestModelName(directory: String) throws -> String {
        guard let text = try? String(contentsOfFile: directory + "/" + latestName, encoding: .utf8) else {
            throw FileError("\(directory): no '\(latestName)' file, so no complete checkpoint; pass a checkpoint file instead")
        }
        return text.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// A checkpoint file, or a run directory meaning its latest checkpoint.
    public static func resolve(_ path: String) throws -> String {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw FileError("\(path): no such checkpoint file or directory")
        }
        return isDirectory.boolValue ? path + "/" + (try latestModelName(directory: path)) : path
    }

    /// The model files a resume from `path` may use, newest first: the file itself, or a
    /// directory's `latest` and then every checkpoint in it by step; none when it is absent.
    public static func candidates(_ path: String) -> [String] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { return [] }
        guard isDirectory.boolValue else { return [path] }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        let models = names.filter { $0.hasPrefix("ckpt-") && $0.hasSuffix(".safetensors") && !$0.hasSuffix(".state.safetensors") }
        var ordered = (try? [latestModelName(directory: path)]) ?? []
        ordered += models.sorted(by: >).filter { !ordered.contains($0) }
        return ordered.map { path + "/" + $0 }
    }

    /// Reads and checks a model file: ours, checksum intact, tensors shaped as its config says.
    public static func loadModel(_ path: String) throws -> (config: ModelConfig, step: Int, metadata: [String: String], params: [Float]) {
        let file = try SafetensorsFile(path: path)
        guard file.metadata["format"] == format else {
            throw FileError("\(path): not a goml-dist checkpoint (metadata 'format' is \(file.metadata["format"].map { "'\($0)'" } ?? "missing"), expected '\(format)')")
        }
        guard let configText = file.metadata["config"],
              let config = try? JSONDecoder().decode(ModelConfig.self, from: Data(configText.utf8)) else {
            throw FileError("\(path): checkpoint metadata 'config' is missing or unreadable")
        }
        do { try config.validate() } catch { throw FileError("\(path): checkpoint config is invalid: \(error)") }
        guard let step = file.metadata["step"].flatMap({ Int($0) }) else { throw FileError("\(path): checkpoint has no step") }
        let layout = ParameterLayout(config)
        var params = [Float](repeating: 0, count: layout.count)
        try params.withUnsafeMutableBufferPointer { buffer in
            for t in layout.tensors {
                let info = try file.tensor(t.name)
                guard info.shape == t.shape else {
                    throw FileError("\(path): tensor \(t.name) has shape \(info.shape) but the config needs \(t.shape)")
                }
                try file.copyFloats(t.name, into: UnsafeMutableBufferPointer(rebasing: buffer[t.range]))
            }
        }
        let checksum = params.withUnsafeBufferPointer { contentChecksum($0) }
        guard file.metadata["checksum"] == hex(checksum) else {
            throw FileError("\(path): content checksum mismatch (stored \(file.metadata["checksum"] ?? "none"), computed \(hex(checksum))): the file is corrupt; use an earlier checkpoint")
        }
        return (config, step, file.metadata, params)
    }

    /// Reads a model file and its state companion, checking that they belong together.
    public static func loadTraining(_ path: String) throws -> TrainingCheckpoint {
        let model = try loadModel(path)
        let directory = (path as NSString).deletingLastPathComponent
        let statePath = (directory.isEmpty ? "." : directory) + "/" + stateFileName(forModel: (path as NSString).lastPathComponent)
        let state = try SafetensorsFile(path: statePath)
        guard state.metadata["format"] == format, state.metadata["model_checksum"] == model.metadata["checksum"],
              state.metadata["step"] == String(model.step) else {
            throw FileError("\(statePath): training state does not belong to \(path) (format, step or model checksum differ)")
        }
        let layout = ParameterLayout(model.config)
        var m = [Float](repeating: 0, count: layout.count), v = m
        for t in layout.tensors {
            try m.withUnsafeMutableBufferPointer { try state.copyFloats("m." + t.name, into: UnsafeMutableBufferPointer(rebasing: $0[t.range])) }
            try v.withUnsafeMutableBufferPointer { try state.copyFloats("v." + t.name, into: UnsafeMutableBufferPointer(rebasing: $0[t.range])) }
        }
        let checksum = m.withUnsafeBufferPointer { mb in v.withUnsafeBufferPointer { contentChecksum($0, seed: contentChecksum(mb)) } }
        guard state.metadata["checksum"] == hex(checksum) else {
            throw FileError("\(statePath): content checksum mismatch: the file is corrupt; use an earlier checkpoint")
        }
        guard let adamStep = state.metadata["adam_step"].flatMap({ Int($0) }) else { throw FileError("\(statePath): no adam_step") }
        var generators: [String: [UInt64]] = [:]
        for (key, value) in state.metadata where key.hasPrefix("generator.") {
            let words = value.split(separator: ",").compactMap { UInt64($0) }
            guard words.count == 4 else { throw FileError("\(statePath): generator state '\(key)' is malformed") }
            generators[String(key.dropFirst("generator.".count))] = words
        }
        var checkpoint = TrainingCheckpoint(path: path, config: model.config, step: model.step, optionsJSON: model.metadata["options"] ?? "{}",
                                            params: model.params, m: m, v: v, adamStep: adamStep, generators: generators,
                                            dataFingerprint: model.metadata["data_fingerprint"])
        checkpoint.progress = try state.metadata["progress"].map { text in
            do { return try JSONDecoder().decode(RunProgress.self, from: Data(text.utf8)) } catch {
                throw FileError("\(statePath): its run progress is malformed (\(error)); use an earlier checkpoint")
            }
        }
        if let outerName = model.metadata["outer_file"] {
            checkpoint.outer = try loadOuter((directory.isEmpty ? "." : directory) + "/" + outerName, layout: layout, model: model.metadata,
                                             step: model.step)
        }
        return checkpoint
    }

    static func outerFile(_ outer: OuterCheckpoint, layout: ParameterLayout, step: Int, modelChecksum: UInt64) throws -> SafetensorsWriter {
        var file = SafetensorsWriter(metadata: [
            "format": format, "step": String(step), "model_checksum": hex(modelChecksum), "workers": String(outer.workers.count),
        ])
        var checksum = outer.momentum.withUnsafeBufferPointer { contentChecksum($0) }
        for (w, worker) in outer.workers.enumerated() {
            file.metadata["generator.worker\(w)"] = worker.generator.map(String.init).joined(separator: ",")
            for values in [worker.params, worker.m, worker.v] { checksum = values.withUnsafeBufferPointer { contentChecksum($0, seed: checksum) } }
        }
        if let sum = outer.pendingSum { checksum = sum.withUnsafeBufferPointer { contentChecksum($0, seed: checksum) } }
        file.metadata["checksum"] = hex(checksum)
        for t in layout.tensors {
            try outer.momentum.withUnsafeBufferPointer { try file.addFloats("momentum." + t.name, shape: t.shape, UnsafeBufferPointer(rebasing: $0[t.range])) }
            try outer.pendingSum?.withUnsafeBufferPointer { try file.addFloats("pending." + t.name, shape: t.shape, UnsafeBufferPointer(rebasing: $0[t.range])) }
            for (w, worker) in outer.workers.enumerated() {
                for (kind, values) in [("params", worker.params), ("m", worker.m), ("v", worker.v)] {
                    try values.withUnsafeBufferPointer { try file.addFloats("worker\(w).\(kind)." + t.name, shape: t.shape, UnsafeBufferPointer(rebasing: $0[t.range])) }
                }
            }
        }
        return file
    }

    static func loadOuter(_ path: String, layout: ParameterLayout, model: [String: String], step: Int) throws -> OuterCheckpoint {
        let file = try SafetensorsFile(path: path)
        guard file.metadata["format"] == format, file.metadata["model_checksum"] == model["checksum"], file.metadata["step"] == String(step),
              let workers = file.metadata["workers"].flatMap({ Int($0) }), workers > 0 else {
            throw FileError("\(path): outer state does not belong to its model file (format, step or model checksum differ)")
        }
        func tensors(_ prefix: String) throws -> [Float] {
            var values = [Float](repeating: 0, count: layout.count)
            for t in layout.tensors {
                try values.withUnsafeMutableBufferPointer { try file.copyFloats(prefix + t.name, into: UnsafeMutableBufferPointer(rebasing: $0[t.range])) }
            }
            return values
        }
        let momentum = try tensors("momentum.")
        var checksum = momentum.withUnsafeBufferPointer { contentChecksum($0) }
        var states: [WorkerCheckpoint] = []
        for w in 0..<workers {
            let params = try tensors("worker\(w).params."), m = try tensors("worker\(w).m."), v = try tensors("worker\(w).v.")
            for values in [params, m, v] { checksum = values.withUnsafeBufferPointer { contentChecksum($0, seed: checksum) } }
            let words = (file.metadata["generator.worker\(w)"] ?? "").split(separator: ",").compactMap { UInt64($0) }
            guard words.count == 4 else { throw FileError("\(path): worker \(w)'s generator state is malformed") }
            states.append(WorkerCheckpoint(params: params, m: m, v: v, generator: words))
        }
        let pending = (try? file.tensor("pending." + layout.tensors[0].name)) == nil ? nil : try tensors("pending.")
        if let pending { checksum = pending.withUnsafeBufferPointer { contentChecksum($0, seed: checksum) } }
        guard file.metadata["checksum"] == hex(checksum) else {
            throw FileError("\(path): content checksum mismatch: the file is corrupt; use an earlier checkpoint")
        }
        return OuterCheckpoint(momentum: momentum, workers: states, pendingSum: pending)
    }

    static func hex(_ value: UInt64) -> String { String(value, radix: 16) }
}
