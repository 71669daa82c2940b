// Identity-only storage for the Function app: the host's own state (AzureWebJobsStorage), the Flex
// Consumption deployment package container, and the bridge's state table and outbox queues.
// Shared keys are off, so nothing can reach it with a connection string.
@minLength(3)
@maxLength(24)
@description('Storage account name: 3-24 lowercase letters and digits.')
param name string
param location string
param tags object
param deploymentContainerName string
param stateTableName string
param outboxQueueName string

// Public endpoint: Flex Consumption without a virtual network reaches storage over it; access is by
// Entra ID only (no shared keys, no anonymous blobs).
resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: No VNet here (Flex reaches storage over its public endpoint); every request needs an Entra token because shared keys are off.
  // checkov:skip=CKV_AZURE_59: Same as CKV_AZURE_35: public endpoint, Entra-only access, anonymous blob access off.
  // checkov:skip=CKV_AZURE_206: LRS is enough for re-creatable delivery state; ZRS/GRS is a per-region cost choice for the operator.
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource stateTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: tableService
  name: stateTableName
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource outboxQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: outboxQueueName
}

// Created up front so moving a message aside never depends on the identity creating queues.
resource outboxPoisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: '${outboxQueueName}-poison'
}

output id string = storage.id
output name string = storage.name
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output queueEndpoint string = storage.properties.primaryEndpoints.queue
output tableEndpoint string = storage.properties.primaryEndpoints.table
output deploymentContainerName string = deploymentContainer.name
output stateTableName string = stateTable.name
output outboxQueueName string = outboxQueue.name
