// ResumePolicy: which checkpoint a run may continue from. A resumption must continue the same
// trajectory: same model, same options that shape the numbers (the strategy adds its own),
// the same corpus unless allowed, and steps still to go. The lowest rank on each host calls
// this on its own disk (CheckpointReplicas agrees on the newest; its holder broadcasts it).

import Foundation
import GomlCore
import GomlIO

/// This host's newest checkpoint under `path` (a file, or a directory's `latest` then its older
/// checkpoints) that loads intact and may continue this run. A missing, corrupt or half-written
/// file is skipped, its reason kept; one that would change the run is an error.
public func newestResumableCheckpoint(_ path: String, options: TrainingOptions, dataIdentity: String,
                                      allowDataChange: Bool) throws -> LocalResumeCandidate {
    var candidate = LocalResumeCandidate()
    for file in Checkpoint.candidates(path) {
        let ckpt: TrainingCheckpoint
        do {
            ckpt = try Checkpoint.loadTraining(file)
        } catch {
            candidate.skipped.append("\(error)")
            continue
        }
        candidate.checkpoint = try checkResumable(ckpt, options: options, dataIdentity: dataIdentity, allowDataChange: allowDataChange)
        break
    }
    return candidate
}

/// `ckpt`, refused with a one-line error when it cannot continue this run unchanged. A corpus
/// other than the checkpoint's (`dataIdentity`) is refused unless `allowDataChange`, then warned about.
func checkResumable(_ ckpt: TrainingCheckpoint, options: TrainingOptions, dataIdentity: String,
                    allowDataChange: Bool) throws -> TrainingCheckpoint {
    if let saved = ckpt.dataFingerprint, saved != dataIdentity {
        let change = "checkpoint \(ckpt.path) was trained on data with fingerprint \(saved), but this run's is \(dataIdentity)"
        guard allowDataChange else {
            throw ConfigError("\(change); pass the original --data (and --val-data), or --allow-data-change to continue on this corpus")
        }
        FileHandle.standardError.write(Data("goml-dist: warning: \(change); continuing (--allow-data-change)\n".utf8))
    }
    if ckpt.config != options.model {
        throw ConfigError("checkpoint \(ckpt.path) holds model \(ckpt.config.summary) but the options ask for \(options.model.summary); pass the same --config/overrides as the original run")
    }
    if let saved = try? JSONDecoder().decode(TrainingOptions.self, from: Data(ckpt.optionsJSON.utf8)),
       case let diffs = options.sameTrajectory(as: saved), !diffs.isEmpty {
        throw ConfigError("resuming \(ckpt.path) with different options (\(diffs.joined(separator: "; "))); pass the original run's options")
    }
    if ckpt.step >= options.steps {
        throw ConfigError("checkpoint \(ckpt.path) is at step \(ckpt.step), not before --steps \(options.steps); raise --steps to continue")
    }
    return ckpt
}
