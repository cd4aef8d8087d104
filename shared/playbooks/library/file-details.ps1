<#
.SYNOPSIS
  Describes one file without fetching it: SHA-256, size, times, Authenticode signature and
  alternate data streams, as one JSON document on standard output.
.DESCRIPTION
  Read-only. Shipped with the live response pipeline's bundled playbooks
  (shared/playbooks/library/file-details.ps1) and kept in the tenant's live response library by
  the pipeline, verified by SHA-256.
.PARAMETER Path
  The file, taken literally (never as a wildcard pattern).
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)]
    [string]$Path
)

$ErrorActionPreference = 'Stop'
if (-not (Test-Path -LiteralPath $Path -PathType Leaf)) {
    Write-Error "no such file: $Path"
    exit 2
}
$item = Get-Item -LiteralPath $Path -Force
$signature = Get-AuthenticodeSignature -LiteralPath $Path
$streams = @(Get-Item -LiteralPath $Path -Stream * -Force |
    Where-Object { $_.Stream -ne ':$DATA' } |
    ForEach-Object { [ordered]@{ name = $_.Stream; bytes = $_.Length } })
[ordered]@{
    path         = $item.FullName
    bytes        = $item.Length
    sha256       = (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash
    created_utc  = $item.CreationTimeUtc.ToString('o')
    modified_utc = $item.LastWriteTimeUtc.ToString('o')
    accessed_utc = $item.LastAccessTimeUtc.ToString('o')
    attributes   = "$($item.Attributes)"
    signature    = [ordered]@{
        status     = "$($signature.Status)"
        signer     = if ($signature.SignerCertificate) { $signature.SignerCertificate.Subject }
        thumbprint = if ($signature.SignerCertificate) { $signature.SignerCertificate.Thumbprint }
    }
    streams      = $streams
} | ConvertTo-Json -Depth 4 -Compress
